// Command bench measures imagekeeper against the ideal and against the usual
// alternative (DESIGN.md section 10; figures, not pass/fail). Every benchmark runs
// the real binaries as separate processes on loopback: `imagekeeper simcloud` as
// the cloud, and `imagekeeper run` or `imagekeeper daemon` as the system under
// test, so that CPU time and peak RSS are those of the process a user runs
// (getrusage of the waited child) and not of the simulator.
//
//	go run ./bench slot         one slot over 1,000 servers vs the ideal bound
//	go run ./bench alternative  `openstack server image create --wait` loop vs `imagekeeper run`, 100 servers
//	go run ./bench scale        daemon time-to-ready and RSS with 10,000 servers, 100 policies and a
//	                            1,000,000-row lineage; slot lateness with 100 policies due at once
//
// Each prints its figures and ends with one machine-readable line starting with
// "bench <name>:". BENCHMARKS.md has the latest figures and the machine.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if len(os.Args) < 2 {
		printUsage()
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "slot":
		err = benchSlot(ctx, os.Args[2:])
	case "alternative":
		err = benchAlternative(ctx, os.Args[2:])
	case "scale":
		err = benchScale(ctx, os.Args[2:])
	default:
		printUsage()
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

func printUsage() {
	fmt.Fprintln(os.Stderr, "usage: go run ./bench slot|alternative|scale [flags]   (-h for the flags of each)")
}
