// Command imagekeeper-soak is the crash-and-fault soak of imagekeeper (DESIGN.md
// section 10): it starts `imagekeeper simcloud` and `imagekeeper daemon` as separate
// processes on loopback, runs sub-minute schedules with small retention over ~40
// image- and volume-backed servers, injects faults through the simulator's /_sim/
// control API (5xx, 429 with Retry-After, latency spikes, hangs, token expiry,
// failed and stuck snapshots, createImage calls whose outcome is lost), kill -9s
// the daemon at seeded random moments, restarting it each time, and rewrites the
// policy file every few seconds (keep_last raised and lowered, a policy disabled or
// removed and brought back, SIGHUP or the file watcher) and retags servers so that a
// policy selects nothing, logging every config version it wrote. At the end it
// clears the faults, restores the base config, lets the daemon converge, stops it
// (and, when that stop left slots running, starts it once more without faults until
// they are settled, as a next start would), and checks the simulator's state, its
// request log and a copy of the lineage database against the invariants:
//
//   - duplicates: no (policy, server, slot) has two images in the cloud;
//   - untracked: no image that createImage made with our owner stamp lacks a lineage row;
//   - leftovers: no volume snapshot of an image the lineage records as deleted is left;
//   - wrong_deletions: nothing was deleted that was not ours, that was protected or a
//     decoy, that min_keep needed, and no snapshot was deleted under a live image;
//   - kept_by_config: each image's first Glance DELETE, attributed to the config
//     version in force at that instant (the daemon logs each version it applied),
//     is of a policy present and enabled then, and of an image that config's
//     keep_last did not keep;
//   - every slot has an outcome and no scheduled slot is silently absent (a gap
//     while the policy was disabled, removed or selected nothing is the config's).
//
// The last line is machine-readable:
//
//	soak: slots=.. kills=.. faults=.. images=.. duplicates=0 untracked=0 leftovers=0 wrong_deletions=0 ...
//
// and the exit status is 1 on any violation, 2 when the soak itself could not run.
//
// Usage (see BENCHMARKS.md):
//
//	go run ./cmd/imagekeeper-soak -mode short            # CI: ~3.5 minutes
//	go run ./cmd/imagekeeper-soak -mode long             # 100 kills over >= 500 slots
//	go run ./cmd/imagekeeper-soak -bin ./imagekeeper -seed 7 -duration 5m -kills 20
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"
)

// Exit statuses.
const (
	exitViolations = 1
	exitBroken     = 2
)

// options is what one soak does.
type options struct {
	Bin      string
	Workdir  string
	Keep     bool
	Seed     int64
	Servers  int
	Duration time.Duration
	Kills    int
	Settle   time.Duration
	Converge time.Duration
	Verbose  bool
	Mode     string
}

// modes are the documented presets; explicit flags override them.
var modes = map[string]options{
	"short": {Servers: 40, Duration: 105 * time.Second, Kills: 10, Settle: 30 * time.Second, Converge: 45 * time.Second},
	"long":  {Servers: 40, Duration: 26 * time.Minute, Kills: 100, Settle: 60 * time.Second, Converge: 2 * time.Minute},
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("imagekeeper-soak", flag.ContinueOnError)
	fs.SetOutput(stderr)
	mode := fs.String("mode", "short", "preset: short (CI, ~3.5 min) or long (100 kills, >= 500 slots)")
	bin := fs.String("bin", "", "imagekeeper binary; empty builds ./cmd/imagekeeper into the work directory")
	workdir := fs.String("workdir", "", "work directory (kept); empty makes a temporary one, removed on success")
	seed := fs.Int64("seed", 0, "seed of the kill and fault schedule; 0 picks one from the clock (printed)")
	servers := fs.Int("servers", 0, "number of servers (0: the mode's)")
	duration := fs.Duration("duration", 0, "length of the kill-and-fault phase (0: the mode's)")
	kills := fs.Int("kills", -1, "number of kill -9s spread over the phase (-1: the mode's)")
	settle := fs.Duration("settle", 0, "fault-free time given to the daemon before the checks (0: the mode's)")
	converge := fs.Duration("converge", 0, "time budget of the reconcile and prune rounds after the daemon stopped (0: the mode's)")
	verbose := fs.Bool("v", false, "print every fault and kill as it happens")
	known := fs.String("known", "", "comma-separated violation counters (e.g. no_outcome) that are known bugs: reported, but they do not fail the soak")
	if err := fs.Parse(args); err != nil {
		return exitBroken
	}
	o, ok := modes[*mode]
	if !ok {
		fmt.Fprintf(stderr, "imagekeeper-soak: unknown -mode %q (short or long)\n", *mode)
		return exitBroken
	}
	o.Mode = *mode
	o.Bin, o.Workdir, o.Verbose = *bin, *workdir, *verbose
	o.Seed = *seed
	if o.Seed == 0 {
		o.Seed = time.Now().UnixNano() % 1_000_000
	}
	if *servers > 0 {
		o.Servers = *servers
	}
	if *duration > 0 {
		o.Duration = *duration
	}
	if *kills >= 0 {
		o.Kills = *kills
	}
	if *settle > 0 {
		o.Settle = *settle
	}
	if *converge > 0 {
		o.Converge = *converge
	}
	if o.Servers < 12 {
		fmt.Fprintln(stderr, "imagekeeper-soak: need at least 12 servers")
		return exitBroken
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	tmp := o.Workdir == ""
	if tmp {
		d, err := os.MkdirTemp("", "imagekeeper-soak-")
		if err != nil {
			fmt.Fprintf(stderr, "imagekeeper-soak: %v\n", err)
			return exitBroken
		}
		o.Workdir = d
	} else if err := os.MkdirAll(o.Workdir, 0o755); err != nil {
		fmt.Fprintf(stderr, "imagekeeper-soak: %v\n", err)
		return exitBroken
	}
	abs, err := filepath.Abs(o.Workdir)
	if err == nil {
		o.Workdir = abs
	}
	s := &soak{opts: o, out: stdout, log: stderr}
	res, err := s.run(ctx)
	if err != nil {
		fmt.Fprintf(stderr, "imagekeeper-soak: %v (work directory kept: %s)\n", err, o.Workdir)
		return exitBroken
	}
	fmt.Fprintln(stdout, res.report(s))
	fmt.Fprintln(stdout, res.line())
	if n := res.failing(*known); n > 0 {
		fmt.Fprintf(stderr, "imagekeeper-soak: %d violations (seed %d); work directory kept: %s\n",
			n, o.Seed, o.Workdir)
		return exitViolations
	}
	if res.violations() > 0 {
		fmt.Fprintf(stderr, "imagekeeper-soak: %d violations, all of kinds listed in -known %q\n", res.violations(), *known)
	}
	if tmp && !errors.Is(ctx.Err(), context.Canceled) {
		_ = os.RemoveAll(o.Workdir)
	}
	return 0
}
