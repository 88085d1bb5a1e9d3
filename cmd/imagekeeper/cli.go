package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"gopkg.in/yaml.v3"

	"github.com/imagekeeper/imagekeeper/policy"
)

// This file holds what every subcommand does the same way: the shared flags, how
// flags are parsed and bad ones reported, and how results are printed (a table for
// people, indented JSON for scripts). A command that does it here cannot drift from
// the others in a flag's name, default, help text or exit code.

// Values of -o.
const (
	outputTable = "table"
	outputJSON  = "json"
)

// common is what every command's options share: the flags every command spells the
// same way (--config, -o/--output, --log-format/--log-level, registered by the
// command that wants them with withConfig, withOutput and withLogs) and what they
// yield once checked. A command's options struct embeds it.
type common struct {
	m    *Main
	name string // the command's name, for log lines

	config string // --config, when withConfig registered it
	state  string // --state, when withState registered it
	output string // -o, when withOutput registered it
	logs   *logFlags
	// log is built by complete from --log-format and --log-level; it discards when
	// the command has no log flags.
	log *slog.Logger

	cmd   *cobra.Command
	flags *pflag.FlagSet
}

// newCommon returns the shared options of cmd. It makes complete cmd's PreRunE, so
// that the shared checks run before the command's own code, in every command alike.
func newCommon(m *Main, cmd *cobra.Command) *common {
	c := &common{m: m, name: cmd.Name(), log: discardLogger(), cmd: cmd, flags: cmd.Flags()}
	cmd.PreRunE = func(*cobra.Command, []string) error { return c.complete() }
	return c
}

// withConfig registers --config, the policy file.
func (c *common) withConfig() *common {
	c.flags.StringVar(&c.config, "config", defaultConfigPath, "policy file")
	return c
}

// withState registers --state, the lineage database, for the commands that can do
// without the policy file: they read the lineage at that path (and find the
// daemon's control socket beside it) even when the policy file is missing or no
// longer validates.
func (c *common) withState() *common {
	c.flags.StringVar(&c.state, "state", "", "lineage database to read (default: the policy file's state:); no policy file needed")
	return c
}

// statePath is the lineage the command is about: --state, or the policy file's
// state:, read leniently so that a file that no longer validates still names it.
// "" when neither says.
func (c *common) statePath() string {
	if c.state != "" {
		return c.state
	}
	return policyFileState(c.config)
}

// policyFileState reads only state: from the policy file at path, without
// validating the rest; the default state when the file has none, "" when it
// cannot be read at all.
func policyFileState(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	var v struct {
		State string `yaml:"state"`
	}
	if err := yaml.Unmarshal(b, &v); err != nil {
		return ""
	}
	if v.State == "" {
		return policy.DefaultState
	}
	return v.State
}

// viaDaemon runs cmd in the daemon when one serves the lineage: it sends the
// command line over the control socket and prints what the daemon prints. handled
// is false when no daemon listens (or this already is the daemon): the caller then
// does the work itself.
func (c *common) viaDaemon(ctx context.Context, cmd *cobra.Command, args []string) (handled bool, err error) {
	if c.m.daemon != nil {
		return false, nil
	}
	state := c.statePath()
	if state == "" {
		return false, nil
	}
	code, err := callDaemon(ctx, controlSocketPath(state), forwardArgs(cmd, args), c.m.Stdout, c.m.Stderr)
	switch {
	case errors.Is(err, errNoDaemon):
		return false, nil
	case err != nil:
		return true, withExitCode(exitFailure, err)
	case code != exitOK:
		return true, withExitCode(code, errSilent)
	}
	return true, nil
}

// daemonForwarder is the options of a command that a daemon serving the lineage
// runs in its place (they embed *common, whose viaDaemon does the forwarding).
type daemonForwarder interface {
	viaDaemon(ctx context.Context, cmd *cobra.Command, args []string) (handled bool, err error)
}

// inDaemonOr returns the RunE of a command that runs in the daemon when one serves
// the lineage and runs local in this process otherwise. It takes the options, not
// their *common, because the command literal is built before the options' common is
// set: the forwarding is resolved when the command runs.
func inDaemonOr(o daemonForwarder, local func(cmd *cobra.Command, args []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		if handled, err := o.viaDaemon(cmd.Context(), cmd, args); handled {
			return err
		}
		return local(cmd, args)
	}
}

// withOutput registers -o/--output; complete rejects anything but table or json.
func (c *common) withOutput() *common {
	c.flags.StringVarP(&c.output, "output", "o", outputTable, "output format: table or json")
	completeValues(c.cmd, "output", outputTable, outputJSON)
	return c
}

// withLogs registers --log-format and --log-level with level as the default. The
// commands that print their own progress default to warn, so that per-image log
// lines on stderr do not repeat what stdout already says.
func (c *common) withLogs(level string) *common {
	c.logs = addLogFlags(c.flags)
	c.logs.level = level
	c.flags.Lookup("log-level").DefValue = level
	completeValues(c.cmd, "log-format", logFormatText, logFormatJSON)
	completeValues(c.cmd, "log-level", "debug", "info", "warn", "error")
	return c
}

// complete checks what every command checks the same way, after the flags are
// parsed: a bad -o value or log flag is a usage error (exit 2).
func (c *common) complete() error {
	if c.flags.Lookup("output") != nil && c.output != outputTable && c.output != outputJSON {
		return usageError("-o %q: use %s or %s", c.output, outputTable, outputJSON)
	}
	if c.logs != nil {
		log, err := c.logs.logger(c.m.Stderr)
		if err != nil {
			return err
		}
		c.log = log
	}
	return nil
}

// json reports whether -o asked for JSON.
func (c *common) json() bool { return c.output == outputJSON }

// completeValues offers fixed values for cmd's flag name in shell completion.
func completeValues(cmd *cobra.Command, name string, values ...string) {
	_ = cmd.RegisterFlagCompletionFunc(name, cobra.FixedCompletions(values, cobra.ShellCompDirectiveNoFileComp))
}

// completePolicies completes cmd's --policy with the names of the policies in the
// file --config names.
func completePolicies(cmd *cobra.Command, c *common) {
	_ = cmd.RegisterFlagCompletionFunc("policy", func(*cobra.Command, []string, string) ([]cobra.Completion, cobra.ShellCompDirective) {
		cfg, err := policy.Load(c.config)
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		var names []cobra.Completion
		for _, p := range cfg.Policies {
			names = append(names, p.Name)
		}
		return names, cobra.ShellCompDirectiveNoFileComp
	})
}

// noArgs is the Args check of a command that takes no positional argument: a stray
// one is a usage error that quotes the command's usage line.
func noArgs(cmd *cobra.Command, args []string) error {
	return exactArgs(0)(cmd, args)
}

// exactArgs is the Args check of a command that takes n positional arguments.
func exactArgs(n int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		switch {
		case len(args) > n:
			return usageError("unexpected argument %q (usage: %s)", args[n], cmd.UseLine())
		case len(args) < n:
			return usageError("usage: %s", cmd.UseLine())
		}
		return nil
	}
}

// writeJSON writes v as indented JSON, the one JSON format of every -o json.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// optTime is a time for a JSON field with omitempty: a time not reached yet is left
// out, where the zero time.Time would print as 0001-01-01.
func optTime(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

// table is a text table whose columns line up however long the cells are; every
// command's tables share its padding.
type table struct {
	tw *tabwriter.Writer
}

// newTable starts a table on w with its header row.
func newTable(w io.Writer, header ...string) *table {
	t := &table{tw: tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)}
	fmt.Fprintln(t.tw, strings.Join(header, "\t"))
	return t
}

// row adds a row; cells are printed as fmt.Sprint prints them.
func (t *table) row(cells ...any) {
	s := make([]string, len(cells))
	for i, c := range cells {
		s[i] = fmt.Sprint(c)
	}
	fmt.Fprintln(t.tw, strings.Join(s, "\t"))
}

// flush writes the table out: nothing is printed before, since the column widths
// depend on every row.
func (t *table) flush() error { return t.tw.Flush() }

// plural counts n things in words: "1 policy", "2 policies", "0 policies".
func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}

// orDash fills an empty table cell, so that columns stay countable.
func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
