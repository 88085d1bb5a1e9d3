package main

import (
	"bytes"
	"cmp"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// The man pages are written here from the command tree rather than with
// cobra/doc: cobra/doc renders through Markdown with go-md2man and blackfriday,
// two more modules in the build for a dozen plain pages that roff says directly.

// manOptions are the flags of `imagekeeper man`.
type manOptions struct {
	dir string
}

// newManCommand builds `imagekeeper man`, which the package build uses.
func newManCommand(m *Main) *cobra.Command {
	o := &manOptions{}
	cmd := &cobra.Command{
		Use:   "man --dir DIR",
		Short: "write a man page for every command into a directory",
		Long: `Writes imagekeeper.1 and one imagekeeper-COMMAND.1 per command into DIR, from
the same help text that -h prints. The Debian package ships them.`,
		Example: `  imagekeeper man --dir /tmp/man && man -l /tmp/man/imagekeeper-run.1`,
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.dir == "" {
				return usageError("--dir is required")
			}
			n, err := writeManPages(cmd.Root(), o.dir)
			if err != nil {
				return err
			}
			fmt.Fprintf(m.Stdout, "wrote %s to %s\n", plural(n, "man page", "man pages"), o.dir)
			return nil
		},
	}
	cmd.Flags().StringVar(&o.dir, "dir", "", "directory to write the pages to (created if missing)")
	return cmd
}

// writeManPages writes a page for root and every available command under it into
// dir and returns how many it wrote.
func writeManPages(root *cobra.Command, dir string) (int, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return 0, fmt.Errorf("man pages: %w", err)
	}
	root.InitDefaultHelpCmd()
	root.InitDefaultCompletionCmd()
	n := 0
	var walk func(c *cobra.Command) error
	walk = func(c *cobra.Command) error {
		if !c.IsAvailableCommand() && c != root {
			return nil
		}
		path := filepath.Join(dir, manName(c)+".1")
		if err := os.WriteFile(path, manPage(c), 0o644); err != nil {
			return fmt.Errorf("man pages: %w", err)
		}
		n++
		for _, sub := range c.Commands() {
			if err := walk(sub); err != nil {
				return err
			}
		}
		return nil
	}
	return n, walk(root)
}

// manName is the page name of c: "imagekeeper-run" for `imagekeeper run`.
func manName(c *cobra.Command) string {
	return strings.ReplaceAll(c.CommandPath(), " ", "-")
}

// manPage renders c's help as a roff man page in section 1.
func manPage(c *cobra.Command) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, ".TH %s 1 \"\" \"imagekeeper %s\" \"imagekeeper manual\"\n", strings.ToUpper(manName(c)), roffEscape(buildVersion()))
	b.WriteString(".SH NAME\n")
	fmt.Fprintf(&b, "%s \\- %s\n", manName(c), roffEscape(c.Short))
	b.WriteString(".SH SYNOPSIS\n")
	fmt.Fprintf(&b, ".B %s\n", roffEscape(c.CommandPath()))
	if rest := strings.TrimSpace(strings.TrimPrefix(c.UseLine(), c.CommandPath())); rest != "" {
		b.WriteString(roffEscape(rest) + "\n")
	}
	b.WriteString(".SH DESCRIPTION\n")
	writeRoffParagraphs(&b, cmp.Or(c.Long, c.Short))
	if c.HasAvailableLocalFlags() {
		b.WriteString(".SH OPTIONS\n")
		c.LocalFlags().VisitAll(func(f *pflag.Flag) {
			if f.Hidden {
				return
			}
			b.WriteString(".TP\n")
			if f.Shorthand != "" {
				fmt.Fprintf(&b, "\\fB\\-%s\\fR, ", f.Shorthand)
			}
			fmt.Fprintf(&b, "\\fB\\-\\-%s\\fR", f.Name)
			if name, _ := pflag.UnquoteUsage(f); name != "" {
				fmt.Fprintf(&b, " \\fI%s\\fR", roffEscape(name))
			}
			b.WriteString("\n")
			_, usage := pflag.UnquoteUsage(f)
			b.WriteString(roffEscape(usage))
			if f.DefValue != "" && f.DefValue != "false" && f.DefValue != "0" && f.DefValue != "[]" {
				fmt.Fprintf(&b, " (default %s)", roffEscape(f.DefValue))
			}
			b.WriteString("\n")
		})
	}
	if c.HasAvailableSubCommands() {
		b.WriteString(".SH COMMANDS\n")
		for _, sub := range c.Commands() {
			if !sub.IsAvailableCommand() {
				continue
			}
			fmt.Fprintf(&b, ".TP\n\\fB%s\\fR(1)\n%s\n", manName(sub), roffEscape(sub.Short))
		}
	}
	if c.Example != "" {
		b.WriteString(".SH EXAMPLES\n.nf\n.RS\n")
		for _, line := range strings.Split(c.Example, "\n") {
			b.WriteString(roffEscape(strings.TrimPrefix(line, "  ")) + "\n")
		}
		b.WriteString(".RE\n.fi\n")
	}
	b.WriteString(".SH EXIT STATUS\n0 success; 1 the work failed or the configuration is invalid; " +
		"2 bad usage (unknown command or flag, wrong arguments) or an unreadable file.\n")
	b.WriteString(".SH SEE ALSO\n")
	if c.HasParent() {
		fmt.Fprintf(&b, "\\fB%s\\fR(1)\n", manName(c.Parent()))
	} else {
		b.WriteString("The operations guide, docs/operations.md, in the source tree and in /usr/share/doc/imagekeeper.\n")
	}
	return b.Bytes()
}

// writeRoffParagraphs writes text with a .PP between its blank-line-separated
// paragraphs; lines within a paragraph are filled by roff.
func writeRoffParagraphs(b *bytes.Buffer, text string) {
	for i, para := range strings.Split(strings.TrimSpace(text), "\n\n") {
		if i > 0 {
			b.WriteString(".PP\n")
		}
		for _, line := range strings.Split(para, "\n") {
			b.WriteString(roffEscape(strings.TrimSpace(line)) + "\n")
		}
	}
}

// roffEscape makes s safe as roff text: a backslash becomes \e, a hyphen \- (so
// that flags copy-paste as ASCII), and a line that would start with a control
// character (. or ') starts with \& instead.
func roffEscape(s string) string {
	s = strings.ReplaceAll(s, `\`, `\e`)
	s = strings.ReplaceAll(s, "-", `\-`)
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		if strings.HasPrefix(l, ".") || strings.HasPrefix(l, "'") {
			lines[i] = `\&` + l
		}
	}
	return strings.Join(lines, "\n")
}
