// Command imagekeeper keeps point-in-time images of cloud servers: it reads YAML
// policies, images the servers they select on each policy's schedule, records the
// lineage in SQLite, and prunes old images and the volume snapshots behind them.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"syscall"
)

// Exit codes shared by every subcommand.
const (
	exitOK      = 0 // success
	exitFailure = 1 // the work failed, or the config is invalid
	exitUsage   = 2 // bad flags, unknown command, or an unreadable file
)

// defaultConfigPath is where the packaged unit expects the policy file.
const defaultConfigPath = "/etc/imagekeeper/imagekeeper.yaml"

// Main is the program: main() is a thin wrapper so that tests can run every
// subcommand in-process with their own streams and environment.
type Main struct {
	Stdin  io.Reader
	Stdout io.Writer
	Stderr io.Writer
	// Getenv reads the environment; tests replace it.
	Getenv func(string) string
}

// NewMain returns a Main wired to the process's streams and environment.
func NewMain() *Main {
	return &Main{Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr, Getenv: os.Getenv}
}

// command is one subcommand. run returns an error; exitCode maps it.
type command struct {
	name    string
	summary string
	run     func(ctx context.Context, m *Main, args []string) error
}

var commands = map[string]command{}

// register adds a subcommand; each lives in its own file so that they can grow
// independently.
func register(c command) {
	if _, dup := commands[c.name]; dup {
		panic("imagekeeper: duplicate command " + c.name)
	}
	commands[c.name] = c
}

// exitError carries a specific exit code through the error chain.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// usageError marks an error as the caller's fault (exit 2).
func usageError(format string, args ...any) error {
	return &exitError{code: exitUsage, err: fmt.Errorf(format, args...)}
}

// withExitCode wraps err so that the process exits with code.
func withExitCode(code int, err error) error {
	if err == nil {
		return nil
	}
	return &exitError{code: code, err: err}
}

// errSilent is returned by commands that have already printed everything the user
// needs (for example every validation error) and only want the exit code.
var errSilent = errors.New("silent")

// Run dispatches args (without the program name) to a subcommand and returns the
// process exit code.
func (m *Main) Run(ctx context.Context, args []string) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		m.usage(m.Stdout)
		if len(args) == 0 {
			return exitUsage
		}
		return exitOK
	}
	cmd, ok := commands[args[0]]
	if !ok {
		fmt.Fprintf(m.Stderr, "imagekeeper: unknown command %q\n\n", args[0])
		m.usage(m.Stderr)
		return exitUsage
	}
	err := cmd.run(ctx, m, args[1:])
	// -h has printed the command's flags: asking for help is not a failure.
	if err == nil || errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	code := exitFailure
	var ee *exitError
	if errors.As(err, &ee) {
		code = ee.code
	}
	if !errors.Is(err, errSilent) {
		fmt.Fprintf(m.Stderr, "imagekeeper %s: %v\n", cmd.name, err)
	}
	return code
}

func (m *Main) usage(w io.Writer) {
	fmt.Fprintln(w, "usage: imagekeeper COMMAND [flags]")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "commands:")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-10s %s\n", n, commands[n].summary)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Run 'imagekeeper COMMAND -h' for the flags of a command.")
}

func main() {
	// The daemon installs its own signal handling (reload, drain, second signal); for
	// every other command the first SIGINT/SIGTERM cancels the context.
	ctx := context.Background()
	stop := func() {}
	if len(os.Args) < 2 || (os.Args[1] != "daemon" && os.Args[1] != "demo") {
		ctx, stop = signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	}
	code := NewMain().Run(ctx, os.Args[1:])
	stop()
	os.Exit(code)
}
