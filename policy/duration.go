package policy

import (
	"fmt"
	"math"
	"strings"
	"time"
)

const (
	day  = 24 * time.Hour
	week = 7 * day
)

// ParseDuration parses Go duration syntax ("1h30m", "90s") extended with the units
// d (24 hours) and w (7 days), as in "7d", "2w" or "1d12h". A day is always 24
// hours: durations measure elapsed time, not calendar days. Negative durations
// parse; callers check the sign so that the message can say what is allowed.
func ParseDuration(s string) (time.Duration, error) {
	orig := s
	if s == "" {
		return 0, fmt.Errorf("empty duration (use for example 90m, 36h, 7d or 2w)")
	}
	neg := false
	if s[0] == '-' || s[0] == '+' {
		neg = s[0] == '-'
		s = s[1:]
	}
	if s == "0" {
		return 0, nil
	}
	if s == "" {
		return 0, fmt.Errorf("invalid duration %q (use for example 90m, 36h, 7d or 2w)", orig)
	}
	var total time.Duration
	for s != "" {
		i := 0
		for i < len(s) && (s[i] == '.' || s[i] >= '0' && s[i] <= '9') {
			i++
		}
		j := i
		for j < len(s) && !(s[j] == '.' || s[j] >= '0' && s[j] <= '9') {
			j++
		}
		num, unit := s[:i], s[i:j]
		s = s[j:]
		if num == "" {
			return 0, fmt.Errorf("invalid duration %q (use for example 90m, 36h, 7d or 2w)", orig)
		}
		if unit == "" {
			return 0, fmt.Errorf("invalid duration %q: missing unit (use ns, us, ms, s, m, h, d or w)", orig)
		}
		mult := time.Duration(1)
		switch unit {
		case "d":
			unit, mult = "h", 24
		case "w":
			unit, mult = "h", 24*7
		case "ns", "us", "µs", "μs", "ms", "s", "m", "h":
		default:
			return 0, fmt.Errorf("invalid duration %q: unknown unit %q (use ns, us, ms, s, m, h, d or w)", orig, unit)
		}
		d, err := time.ParseDuration(num + unit)
		if err != nil {
			return 0, fmt.Errorf("invalid duration %q (use for example 90m, 36h, 7d or 2w)", orig)
		}
		if d > math.MaxInt64/mult || total > math.MaxInt64-d*mult {
			return 0, fmt.Errorf("invalid duration %q: too large", orig)
		}
		total += d * mult
	}
	if neg {
		total = -total
	}
	return total, nil
}

// formatDuration prints a duration with the d unit where it reads better, the
// inverse of ParseDuration for whole days ("7d", "1d12h0m0s" stays Go's form).
func formatDuration(d time.Duration) string {
	if d >= day && d%day == 0 {
		if d%week == 0 {
			return fmt.Sprintf("%dw", d/week)
		}
		return fmt.Sprintf("%dd", d/day)
	}
	s := d.String()
	// Go prints 2h0m0s; the trailing zero units add nothing for a reader.
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}
