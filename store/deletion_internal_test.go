package store

import (
	"database/sql"
	"testing"
	"time"
)

// TestParseFixed checks the hand parser against time.Parse on the stored form, and
// that anything else falls through to the general parser.
func TestParseFixed(t *testing.T) {
	for _, tm := range []time.Time{
		time.Date(2028, 2, 29, 23, 59, 59, 999999999, time.UTC),
		time.Date(1970, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(2026, 11, 24, 2, 30, 0, 1, time.UTC),
	} {
		s := tm.Format(timeFormat)
		got, ok := parseFixed(s)
		if !ok || !got.Equal(tm) {
			t.Errorf("parseFixed(%q) = %v, %v; want %v", s, got, ok, tm)
		}
	}
	for _, bad := range []string{"2027-02-29T00:00:00.000000000Z", "2026-13-01T00:00:00.000000000Z",
		"2026-11-24T02:30:00Z", "2026-11-24T02:30:00.00000000xZ", "2026-11-24 02:30:00.000000000Z"} {
		if _, ok := parseFixed(bad); ok {
			t.Errorf("parseFixed(%q) accepted it", bad)
		}
	}
	// The general path still reads hand-written RFC 3339.
	got, err := parseLean(sql.NullString{String: "2026-11-24T10:30:00+08:00", Valid: true})
	if err != nil || !got.Equal(time.Date(2026, 11, 24, 2, 30, 0, 0, time.UTC)) {
		t.Fatalf("parseLean(RFC 3339) = %v, %v", got, err)
	}
}
