package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"text/tabwriter"
	"time"
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

// flagSet is a subcommand's flags: the command's own, registered on the embedded
// flag.FlagSet, and the shared ones it asks for with withConfig, withOutput and
// withLogs.
type flagSet struct {
	*flag.FlagSet
	m *Main

	config string // --config, when withConfig registered it
	output string // -o, when withOutput registered it
	logs   *logFlags
	// log is built by parse from --log-format and --log-level; it discards when the
	// command has no log flags.
	log *slog.Logger
	// usageLine, when set, heads the -h output and is quoted when the positional
	// arguments are wrong.
	usageLine string
}

// newFlagSet returns the flags of subcommand name. Errors and -h go to m.Stderr:
// stdout carries only results, so that `-o json` output stays parseable.
func newFlagSet(m *Main, name string) *flagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(m.Stderr)
	return &flagSet{FlagSet: fs, m: m, log: discardLogger()}
}

// withConfig registers --config, the policy file.
func (fs *flagSet) withConfig() *flagSet {
	fs.StringVar(&fs.config, "config", defaultConfigPath, "policy file")
	return fs
}

// withOutput registers -o; parse rejects anything but table or json.
func (fs *flagSet) withOutput() *flagSet {
	fs.StringVar(&fs.output, "o", outputTable, "output format: table or json")
	return fs
}

// withLogs registers --log-format and --log-level with level as the default. The
// commands that print their own progress default to warn, so that per-image log
// lines on stderr do not repeat what stdout already says.
func (fs *flagSet) withLogs(level string) *flagSet {
	fs.logs = addLogFlags(fs.FlagSet)
	fs.logs.level = level
	fs.Lookup("log-level").DefValue = level
	return fs
}

// describe gives -h a usage line and a description above the flag list.
func (fs *flagSet) describe(usageLine string, description ...string) *flagSet {
	fs.usageLine = usageLine
	fs.Usage = func() {
		w := fs.Output()
		fmt.Fprintln(w, usageLine)
		if len(description) > 0 {
			fmt.Fprintln(w)
			for _, line := range description {
				fmt.Fprintln(w, line)
			}
		}
		fs.PrintDefaults()
	}
	return fs
}

// parse parses args and checks what every command checks the same way. -h returns
// flag.ErrHelp, which Run turns into exit 0 (the flag package has printed the
// flags); a bad flag, -o value or log flag, or a count of positional arguments other
// than positional, is a usage error (exit 2).
func (fs *flagSet) parse(args []string, positional int) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageError("%v", err)
	}
	if fs.NArg() != positional {
		return fs.argsError(positional)
	}
	if fs.Lookup("o") != nil && fs.output != outputTable && fs.output != outputJSON {
		return usageError("-o %q: use %s or %s", fs.output, outputTable, outputJSON)
	}
	if fs.logs != nil {
		log, err := fs.logs.logger(fs.m.Stderr)
		if err != nil {
			return err
		}
		fs.log = log
	}
	return nil
}

// argsError reports positional arguments the command does not take, or too few.
func (fs *flagSet) argsError(positional int) error {
	switch {
	case fs.NArg() > positional && fs.usageLine != "":
		return usageError("unexpected argument %q (%s)", fs.Arg(positional), fs.usageLine)
	case fs.NArg() > positional:
		return usageError("unexpected argument %q", fs.Arg(positional))
	case fs.usageLine != "":
		return usageError("%s", fs.usageLine)
	default:
		return usageError("want %s, got %d", plural(positional, "argument", "arguments"), fs.NArg())
	}
}

// json reports whether -o asked for JSON.
func (fs *flagSet) json() bool { return fs.output == outputJSON }

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
