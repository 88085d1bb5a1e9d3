package main

import (
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"
)

// version and revision are set by the package build with
// -ldflags "-X main.version=1.2.3 -X main.revision=abc1234". Left empty, they
// come from what the Go toolchain recorded: the module version for
// `go install ...@v1.2.3`, the VCS revision for a build in a git checkout.
var (
	version  string
	revision string
)

// buildVersion returns the version the binary reports: the -ldflags one, else
// the module version, else "dev" (a build from a working tree).
func buildVersion() string {
	if version != "" {
		return version
	}
	if info, ok := debug.ReadBuildInfo(); ok && info.Main.Version != "" && info.Main.Version != "(devel)" {
		return info.Main.Version
	}
	return "dev"
}

// buildRevision returns the VCS revision the binary was built from: the -ldflags
// one, else the one the Go toolchain recorded, else "unknown".
func buildRevision() string {
	if revision != "" {
		return revision
	}
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	rev, modified := "", false
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			modified = s.Value == "true"
		}
	}
	switch {
	case rev == "":
		return "unknown"
	case modified:
		return rev + "-dirty"
	}
	return rev
}

// versionString is what `imagekeeper version` and `imagekeeper --version` print.
func versionString() string {
	return fmt.Sprintf("imagekeeper %s (revision %s, %s)", buildVersion(), buildRevision(), runtime.Version())
}

// newVersionCommand builds `imagekeeper version`.
func newVersionCommand(m *Main) *cobra.Command {
	return &cobra.Command{
		Use:     "version",
		Short:   "print the version, revision and Go version",
		Example: "  imagekeeper version\n  imagekeeper --version",
		Args:    noArgs,
		RunE: func(*cobra.Command, []string) error {
			_, err := fmt.Fprintln(m.Stdout, versionString())
			return err
		},
	}
}
