package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/imagekeeper/imagekeeper/policy"
)

// validateNow is the clock of validate; tests replace it.
var validateNow = time.Now

// validateSlots is how many upcoming slots validate prints per policy.
const validateSlots = 3

// validateOptions are the flags of `imagekeeper validate`.
type validateOptions struct {
	*common
}

// newValidateCommand builds `imagekeeper validate`.
func newValidateCommand(m *Main) *cobra.Command {
	o := &validateOptions{}
	cmd := &cobra.Command{
		Use:   "validate [--config FILE]",
		Short: "check a policy file and print each policy's next slots",
		Long: `Loads the policy file exactly as the daemon would and prints each policy's next
slots. Exit 0 when it is valid; 1 when it is not, with every problem on stderr as
FILE:LINE:COL: ...; 2 when the file cannot be read.`,
		Example: `  imagekeeper validate --config /etc/imagekeeper/imagekeeper.yaml
  imagekeeper validate -o json`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runValidate(cmd.Context(), m, o) },
	}
	o.common = newCommon(m, cmd).withConfig().withOutput()
	return cmd
}

// validateJSON is the -o json output of validate.
type validateJSON struct {
	OK       bool                 `json:"ok"`
	Path     string               `json:"path"`
	Version  string               `json:"version,omitempty"`
	Policies []validatePolicyJSON `json:"policies,omitempty"`
	Errors   []*policy.FieldError `json:"errors,omitempty"`
}

type validatePolicyJSON struct {
	Name     string      `json:"name"`
	Enabled  bool        `json:"enabled"`
	Version  string      `json:"version"`
	Schedule string      `json:"schedule"`
	Timezone string      `json:"timezone"`
	Next     []time.Time `json:"next"`
}

// runValidate loads the file exactly as the daemon would. Exit codes: 0 valid,
// 1 invalid (every problem on stderr as FILE:LINE:COL: ...), 2 unreadable file or
// bad flags.
func runValidate(_ context.Context, m *Main, o *validateOptions) error {
	cfg, err := policy.Load(o.config)
	var perrs policy.Errors
	switch {
	case errors.As(err, &perrs):
		for _, e := range perrs {
			fmt.Fprintln(m.Stderr, e.Error())
		}
		if o.json() {
			if err := writeJSON(m.Stdout, validateJSON{Path: o.config, Errors: perrs}); err != nil {
				return err
			}
		}
		return withExitCode(exitFailure, errSilent)
	case err != nil:
		return withExitCode(exitUsage, err)
	}
	now := validateNow()
	if o.json() {
		out := validateJSON{OK: true, Path: cfg.Path, Version: cfg.Version}
		for _, p := range cfg.Policies {
			out.Policies = append(out.Policies, validatePolicyJSON{
				Name: p.Name, Enabled: p.Enabled, Version: p.Version, Schedule: p.Schedule.Spec,
				Timezone: p.Schedule.Location.String(), Next: nextSlots(p.Schedule, now, validateSlots),
			})
		}
		return writeJSON(m.Stdout, out)
	}
	fmt.Fprintf(m.Stdout, "ok: %s\n", plural(len(cfg.Policies), "policy", "policies"))
	for _, p := range cfg.Policies {
		state := ""
		if !p.Enabled {
			state = ", disabled"
		}
		fmt.Fprintf(m.Stdout, "%s (%s in %s%s):\n", p.Name, p.Schedule.Spec, p.Schedule.Location, state)
		for _, t := range nextSlots(p.Schedule, now, validateSlots) {
			fmt.Fprintf(m.Stdout, "  %s %s\n", t.Format(time.RFC3339), t.Format("MST Mon"))
		}
	}
	return nil
}

func nextSlots(s *policy.Schedule, now time.Time, n int) []time.Time {
	var out []time.Time
	for t := now; len(out) < n; {
		t = s.Next(t)
		if t.IsZero() {
			break
		}
		out = append(out, t)
	}
	return out
}
