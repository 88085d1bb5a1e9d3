package main

import (
	"context"
	"fmt"
	"runtime"
	"runtime/debug"
)

// version is set at build time with -ldflags "-X main.version=v1.2.3".
var version = "dev"

// buildRevision returns the VCS revision the binary was built from, when the Go
// toolchain recorded one.
func buildRevision() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	for _, s := range info.Settings {
		if s.Key == "vcs.revision" {
			return s.Value
		}
	}
	return "unknown"
}

func init() {
	register(command{
		name:    "version",
		summary: "print the version, revision and Go version",
		run: func(_ context.Context, m *Main, args []string) error {
			if err := newFlagSet(m, "version").parse(args, 0); err != nil {
				return err
			}
			fmt.Fprintf(m.Stdout, "imagekeeper %s (revision %s, %s)\n", version, buildRevision(), runtime.Version())
			return nil
		},
	})
}
