package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// commandNames lists the commands of the tree, without cobra's help and
// completion.
func commandNames(t *testing.T) []string {
	t.Helper()
	var names []string
	for _, c := range NewMain().newRootCommand().Commands() {
		if c.Name() != "help" && c.Name() != "completion" {
			names = append(names, c.Name())
		}
	}
	slices.Sort(names)
	if len(names) < 13 {
		t.Fatalf("only %d commands: %v", len(names), names)
	}
	return names
}

// TestEveryCommandParsesFlagsAlike runs every command with -h, help CMD, an unknown
// flag, a stray argument and, where the command has them, a bad -o and a bad log
// level: each must answer the same way before it loads a file or opens anything.
func TestEveryCommandParsesFlagsAlike(t *testing.T) {
	for _, name := range commandNames(t) {
		t.Run(name, func(t *testing.T) {
			code, stdout, stderr := cli(t, name, "-h")
			if code != exitOK || stderr != "" || !strings.Contains(stdout, "Usage:\n  imagekeeper "+name) ||
				!strings.Contains(stdout, "Examples:\n  ") {
				t.Errorf("-h: exit %d, stdout %q, stderr %q; want 0, usage and examples on stdout", code, stdout, stderr)
			}
			if code, help, _ := cli(t, "help", name); code != exitOK || help != stdout {
				t.Errorf("help %s: exit %d, output differs from -h:\n%s", name, code, help)
			}
			in := func(names ...string) bool { return slices.Contains(names, name) }
			hasConfig := in("run", "images", "history", "why", "prune", "plan", "reconcile", "validate", "daemon", "recover", "status", "restore")
			hasOutput := in("images", "history", "why", "prune", "plan", "reconcile", "validate", "status", "restore")
			hasLogs := in("run", "prune", "plan", "reconcile", "daemon", "demo", "recover", "restore")
			for flag, want := range map[string]bool{
				"--config string ": hasConfig,
				`policy file (default "/etc/imagekeeper/imagekeeper.yaml")`: hasConfig,
				"-o, --output string ":                             hasOutput,
				"output format: table or json (default \"table\")": hasOutput,
				"--log-level string ":                              hasLogs,
			} {
				if strings.Contains(stdout, flag) != want {
					t.Errorf("-h lists %q = %v, want %v:\n%s", flag, !want, want, stdout)
				}
			}

			if code, _, stderr := cli(t, name, "--no-such-flag"); code != exitUsage || stderr != "imagekeeper "+name+": unknown flag: --no-such-flag\n" {
				t.Errorf("unknown flag: exit %d, stderr %q", code, stderr)
			}

			// why takes one argument: give it one so that the check under test is the
			// one that fails.
			var positional []string
			switch name {
			case "why":
				positional = []string{"image-id"}
			case "restore":
				positional = []string{"image-id", "--name", "n"}
			}
			with := func(args ...string) []string {
				return slices.Concat([]string{name}, args, positional)
			}
			if code, _, stderr := cli(t, append(with(), "stray")...); code != exitUsage || !strings.Contains(stderr, "imagekeeper "+name+`: unexpected argument "stray"`) {
				t.Errorf("stray argument: exit %d, stderr %q", code, stderr)
			}
			if hasOutput {
				if code, stdout, stderr := cli(t, with("-o", "yaml")...); code != exitUsage || stdout != "" ||
					stderr != "imagekeeper "+name+": -o \"yaml\": use table or json\n" {
					t.Errorf("-o yaml: exit %d, stdout %q, stderr %q", code, stdout, stderr)
				}
			}
			if hasLogs {
				if code, _, stderr := cli(t, with("--log-level", "verbose")...); code != exitUsage ||
					stderr != "imagekeeper "+name+": --log-level \"verbose\": want debug, info, warn or error\n" {
					t.Errorf("--log-level verbose: exit %d, stderr %q", code, stderr)
				}
			}
		})
	}
}

// TestWhyWantsOneImage checks the one command with a positional argument names it
// when it is missing.
func TestWhyWantsOneImage(t *testing.T) {
	code, _, stderr := cli(t, "why")
	if code != exitUsage || stderr != "imagekeeper why: usage: imagekeeper why IMAGE_ID [flags]\n" {
		t.Errorf("why without an image: exit %d, stderr %q", code, stderr)
	}
}

// TestFlagsAfterArguments checks that flags may come before or after the
// positional argument, as in `why IMAGE -o json`: both orders reach the same
// check (here the missing policy file, exit 2).
func TestFlagsAfterArguments(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "missing.yaml")
	for _, args := range [][]string{
		{"why", "--config", missing, "-o", "json", "img-1"},
		{"why", "img-1", "-o", "json", "--config", missing},
		{"why", "-o=json", "img-1", "--config=" + missing},
	} {
		code, stdout, stderr := cli(t, args...)
		if code != exitUsage || stdout != "" || !strings.Contains(stderr, missing) {
			t.Errorf("%q: exit %d, stdout %q, stderr %q; want 2 naming %s", args, code, stdout, stderr, missing)
		}
	}
}

// TestRootCommand checks what the program does with no command, an unknown one,
// --version and help.
func TestRootCommand(t *testing.T) {
	for _, tt := range []struct {
		args   []string
		code   int
		stdout string // a substring; "" means empty
		stderr string // a substring; "" means empty
	}{
		{args: nil, code: exitUsage, stderr: "Available Commands:"},
		{args: []string{"imgaes"}, code: exitUsage, stderr: `imagekeeper: unknown command "imgaes"; did you mean images?`},
		{args: []string{"--version"}, code: exitOK, stdout: "imagekeeper dev (revision "},
		{args: []string{"version"}, code: exitOK, stdout: "imagekeeper dev (revision "},
		{args: []string{"help"}, code: exitOK, stdout: "Available Commands:"},
		{args: []string{"--help"}, code: exitOK, stdout: "Exit codes: 0 success"},
		{args: []string{"help", "nope"}, code: exitUsage, stderr: `imagekeeper help: unknown command "nope"`},
		{args: []string{"help", "run", "extra"}, code: exitUsage, stderr: `imagekeeper help: unexpected argument "extra"`},
	} {
		code, stdout, stderr := cli(t, tt.args...)
		if code != tt.code || (tt.stdout == "") != (stdout == "") || !strings.Contains(stdout, tt.stdout) ||
			(tt.stderr == "") != (stderr == "") || !strings.Contains(stderr, tt.stderr) {
			t.Errorf("%q: exit %d, stdout %q, stderr %q; want %d, stdout with %q, stderr with %q",
				tt.args, code, stdout, stderr, tt.code, tt.stdout, tt.stderr)
		}
	}
}

// TestCompletion checks that the completion scripts are generated for the shells
// the issue names, and that --policy completes from the policy file.
func TestCompletion(t *testing.T) {
	for shell, marker := range map[string]string{
		"bash": "# bash completion V2 for imagekeeper",
		"zsh":  "#compdef imagekeeper",
		"fish": "# fish completion for imagekeeper",
	} {
		code, stdout, stderr := cli(t, "completion", shell)
		if code != exitOK || !strings.HasPrefix(stdout, marker) || stderr != "" {
			t.Errorf("completion %s: exit %d, stderr %q, stdout starts %.60q", shell, code, stderr, stdout)
		}
	}
	cfg := filepath.Join("..", "..", "examples", "multi.yaml")
	code, stdout, stderr := cli(t, "__complete", "run", "--config", cfg, "--policy", "")
	if code != exitOK || !strings.HasPrefix(stdout, "web-6h\ndb-nightly\nvolume-backed\nlegacy-paused\n:4\n") {
		t.Errorf("complete --policy: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	code, stdout, _ = cli(t, "__complete", "images", "-o", "")
	if code != exitOK || !strings.HasPrefix(stdout, "table\njson\n") {
		t.Errorf("complete -o: exit %d, stdout %q", code, stdout)
	}
}

// TestManPages writes the man pages and checks each is a page groff renders
// without a warning, with the command's flags and examples.
func TestManPages(t *testing.T) {
	dir := t.TempDir()
	code, stdout, stderr := cli(t, "man", "--dir", dir)
	if code != exitOK || !strings.HasPrefix(stdout, "wrote ") {
		t.Fatalf("man: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	for _, name := range append(commandNames(t), "") {
		page := "imagekeeper"
		if name != "" {
			page += "-" + name
		}
		b, err := os.ReadFile(filepath.Join(dir, page+".1"))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(string(b), ".TH "+strings.ToUpper(page)+" 1 ") || !strings.Contains(string(b), ".SH EXIT STATUS\n") {
			t.Errorf("%s.1 lacks its header or exit status:\n%s", page, b)
		}
		if name != "" && !strings.Contains(string(b), ".SH EXAMPLES\n") {
			t.Errorf("%s.1 has no examples", page)
		}
	}
	run, _ := os.ReadFile(filepath.Join(dir, "imagekeeper-run.1"))
	if !strings.Contains(string(run), "\\fB\\-\\-policy\\fR \\fIstring\\fR\npolicy to run (required)\n") {
		t.Errorf("imagekeeper-run.1 does not document --policy:\n%s", run)
	}
	groff, err := exec.LookPath("groff")
	if err != nil {
		t.Skip("no groff to render the pages with")
	}
	for _, name := range commandNames(t) {
		cmd := exec.Command(groff, "-man", "-Tutf8", "-ww", "-z", filepath.Join(dir, "imagekeeper-"+name+".1"))
		if out, err := cmd.CombinedOutput(); err != nil || len(out) > 0 {
			t.Errorf("groff on imagekeeper-%s.1: %v\n%s", name, err, out)
		}
	}
}

func TestPlural(t *testing.T) {
	for _, tt := range []struct {
		n    int
		want string
	}{{0, "0 policies"}, {1, "1 policy"}, {2, "2 policies"}} {
		if got := plural(tt.n, "policy", "policies"); got != tt.want {
			t.Errorf("plural(%d) = %q, want %q", tt.n, got, tt.want)
		}
	}
}

// TestMissingPolicyFileIsUsage checks that every command reading the policy file
// exits 2 naming it when it is not there, the daemon too.
func TestMissingPolicyFileIsUsage(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "missing.yaml")
	for _, args := range [][]string{
		{"daemon"}, {"run", "--policy", "web"}, {"prune"}, {"reconcile"}, {"images"}, {"history"},
		{"why", "img-1"}, {"plan"}, {"validate"}, {"status"},
	} {
		code, stdout, stderr := cli(t, append(args, "--config", missing)...)
		if code != exitUsage || stdout != "" || !strings.Contains(stderr, "imagekeeper "+args[0]+": ") ||
			!strings.Contains(stderr, missing) {
			t.Errorf("%s --config %s: exit %d, stdout %q, stderr %q; want 2 naming the file", args[0], missing, code, stdout, stderr)
		}
	}
}
