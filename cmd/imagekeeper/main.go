// Command imagekeeper keeps point-in-time images of cloud servers: it reads YAML
// policies, images the servers they select on each policy's schedule, records the
// lineage in SQLite, and prunes old images and the volume snapshots behind them.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/spf13/cobra"
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
	// ProgressEvery is how often `run` prints a line while it waits; zero means
	// every 10 s.
	ProgressEvery time.Duration
	// Now is the clock of run (its slot), plan and validate; nil means time.Now.
	Now func() time.Time
	// PollInterval is the first wait between polls of run, prune, reconcile and
	// recover; zero means the scheduler's default.
	PollInterval time.Duration
	// SnapshotWait is how long prune waits for deleted volume snapshots to be gone;
	// zero means the scheduler's default.
	SnapshotWait time.Duration

	// Reloads, when set, returns the channel of reload requests; the commands that
	// reload (daemon, demo) call it. main sends one request per SIGHUP without ever
	// blocking, so that requests arriving while one is pending make one reload, and
	// catches SIGHUP only once a command asked: for the others it keeps its default.
	Reloads func() <-chan struct{}
	// Abort is closed when a stopping command should stop waiting for the work in
	// flight (main closes it on a second SIGTERM/SIGINT); nil means never.
	Abort <-chan struct{}

	// daemon is set on the Main the daemon runs a control-socket command with.
	daemon *daemonEnv
}

// NewMain returns a Main wired to the process's streams and environment.
func NewMain() *Main {
	return &Main{Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr, Getenv: os.Getenv}
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

// reloads returns the channel of reload requests, nil when none come.
func (m *Main) reloads() <-chan struct{} {
	if m.Reloads == nil {
		return nil
	}
	return m.Reloads()
}

// now reads m's clock.
func (m *Main) now() time.Time {
	if m.Now != nil {
		return m.Now()
	}
	return time.Now()
}

// Run runs the command line args (without the program name) and returns the
// process exit code. Every error is printed once, on stderr, as
// "imagekeeper COMMAND: ...".
func (m *Main) Run(ctx context.Context, args []string) int {
	root := m.newRootCommand()
	root.SetArgs(args)
	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		return exitOK
	}
	code := exitFailure
	var ee *exitError
	if errors.As(err, &ee) {
		code = ee.code
	}
	if !errors.Is(err, errSilent) {
		prefix := "imagekeeper"
		if cmd != nil && cmd != root {
			prefix += " " + cmd.Name()
		}
		fmt.Fprintf(m.Stderr, "%s: %v\n", prefix, err)
	}
	return code
}

// newRootCommand builds the command tree: one constructor per command, each with
// its own options struct, so that two runs of Main share no flag state.
func (m *Main) newRootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "imagekeeper",
		Short: "keep point-in-time images of cloud servers",
		Long: `imagekeeper keeps point-in-time images of OpenStack servers: it reads YAML
policies, images the servers they select on each policy's schedule, records the
lineage in SQLite, and prunes old images and the volume snapshots behind them.

Exit codes: 0 success; 1 the work failed or the configuration is invalid;
2 bad usage (unknown command or flag, wrong arguments) or an unreadable file.`,
		Version: versionString(),
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				hint := ""
				if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
					hint = "; did you mean " + strings.Join(s, " or ") + "?"
				}
				return usageError("unknown command %q%s (see 'imagekeeper help')", args[0], hint)
			}
			return nil
		},
		// Without a command there is nothing to do: show the commands, exit 2.
		RunE: func(cmd *cobra.Command, _ []string) error {
			cmd.SetOut(m.Stderr)
			_ = cmd.Help()
			return withExitCode(exitUsage, errSilent)
		},
		SilenceErrors: true, // Run prints errors, once, with the command's name
		SilenceUsage:  true, // a failed command does not repeat its help after the error
	}
	root.SuggestionsMinimumDistance = 2
	root.SetVersionTemplate("{{.Version}}\n")
	root.SetIn(m.Stdin)
	root.SetOut(m.Stdout)
	root.SetErr(m.Stderr)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError("%v", err) })
	root.AddCommand(
		newDaemonCommand(m),
		newRunCommand(m),
		newPruneCommand(m),
		newReconcileCommand(m),
		newStatusCommand(m),
		newRecoverCommand(m),
		newImagesCommand(m),
		newHistoryCommand(m),
		newWhyCommand(m),
		newRestoreCommand(m),
		newPlanCommand(m),
		newValidateCommand(m),
		newDemoCommand(m),
		newSimcloudCommand(m),
		newVersionCommand(m),
		newManCommand(m),
	)
	root.SetHelpCommand(newHelpCommand())
	// cobra adds completion on first Execute; adding it now lets its one-line
	// summaries read like ours, lowercase, in help and in the man pages.
	root.InitDefaultCompletionCmd()
	lowercaseSummaries(root)
	return root
}

// newHelpCommand builds `imagekeeper help [COMMAND]`. cobra's own shows the
// program's help for a command it does not know, and exits 0; this one says so,
// and exits 2, as an unknown command does.
func newHelpCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "help [COMMAND]",
		Short:   "show the help of a command",
		Example: "  imagekeeper help run\n  imagekeeper help completion bash",
		RunE: func(cmd *cobra.Command, args []string) error {
			target, rest, err := cmd.Root().Find(args)
			if err != nil || target == nil || (len(args) > 0 && target == cmd.Root()) {
				return usageError("unknown command %q (see 'imagekeeper help')", strings.Join(args, " "))
			}
			if len(rest) > 0 {
				return usageError("unexpected argument %q (usage: %s)", rest[0], cmd.UseLine())
			}
			// As cobra's help does: the flags are added when a command runs.
			target.InitDefaultHelpFlag()
			target.InitDefaultVersionFlag()
			return target.Help()
		},
		ValidArgsFunction: func(cmd *cobra.Command, args []string, _ string) ([]cobra.Completion, cobra.ShellCompDirective) {
			target, _, err := cmd.Root().Find(args)
			if err != nil {
				return nil, cobra.ShellCompDirectiveNoFileComp
			}
			var names []cobra.Completion
			for _, c := range target.Commands() {
				if c.IsAvailableCommand() {
					names = append(names, c.Name())
				}
			}
			return names, cobra.ShellCompDirectiveNoFileComp
		},
	}
}

// lowercaseSummaries starts every one-line summary under c with a lowercase
// letter, as ours do, so that cobra's built-in commands do not stand out.
func lowercaseSummaries(c *cobra.Command) {
	if r, size := utf8.DecodeRuneInString(c.Short); size > 0 {
		c.Short = string(unicode.ToLower(r)) + c.Short[size:]
	}
	for _, sub := range c.Commands() {
		lowercaseSummaries(sub)
	}
}

// forwardSignals turns the signals on sigs into values until sigs is closed: this is
// the one place that knows about signals. The first SIGINT/SIGTERM cancels the
// commands' context through stop, with the signal as its cause; a later one closes
// abort. SIGHUP sends a reload request unless one is already pending (reload has
// one slot): a burst of them is one reload, and the sender never blocks.
func forwardSignals(sigs <-chan os.Signal, stop context.CancelCauseFunc, reload chan<- struct{}, abort chan<- struct{}) {
	stopped, aborted := false, false
	for sig := range sigs {
		switch {
		case sig == syscall.SIGHUP:
			select {
			case reload <- struct{}{}:
			default: // one is pending: it reads the file as it is now
			}
		case !stopped:
			stopped = true
			stop(fmt.Errorf("signal %s", sig))
		case !aborted:
			aborted = true
			close(abort)
		}
	}
}

func main() {
	// Signals become values here and only here: the commands see a context that
	// SIGINT/SIGTERM cancel, an abort channel a second one closes, and reload
	// requests, one per SIGHUP.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	ctx, stop := context.WithCancelCause(context.Background())
	reload, abort := make(chan struct{}, 1), make(chan struct{})
	go forwardSignals(sigs, stop, reload, abort)
	var hup sync.Once
	m := NewMain()
	m.Reloads = func() <-chan struct{} {
		hup.Do(func() { signal.Notify(sigs, syscall.SIGHUP) })
		return reload
	}
	m.Abort = abort
	code := m.Run(ctx, os.Args[1:])
	signal.Stop(sigs)
	os.Exit(code)
}
