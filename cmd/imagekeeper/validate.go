package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/imagekeeper/imagekeeper/cloud"
	"github.com/imagekeeper/imagekeeper/policy"
	"github.com/imagekeeper/imagekeeper/scheduler"
)

// validateSlots is how many upcoming slots validate prints per policy.
const validateSlots = 3

// validateOptions are the flags of `imagekeeper validate`.
type validateOptions struct {
	*common
	checkCloud bool
}

// newValidateCommand builds `imagekeeper validate`.
func newValidateCommand(m *Main) *cobra.Command {
	o := &validateOptions{}
	cmd := &cobra.Command{
		Use:   "validate [--config FILE]",
		Short: "check a policy file and print each policy's next slots",
		Long: `Loads the policy file exactly as the daemon would and prints each policy's next
slots. Exit 0 when it is valid; 1 when it is not, with every problem on stderr as
FILE:LINE:COL: ...; 2 when the file cannot be read.

With --check-cloud it also logs in to the cloud and counts the servers each policy
selects now; an enabled policy that selects none is a warning and exit 1 (its slots
would be empty and back up nothing).`,
		Example: `  imagekeeper validate --config /etc/imagekeeper/imagekeeper.yaml
  imagekeeper validate --check-cloud
  imagekeeper validate -o json`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runValidate(cmd.Context(), m, o) },
	}
	o.common = newCommon(m, cmd).withConfig().withOutput()
	cmd.Flags().BoolVar(&o.checkCloud, "check-cloud", false, "log in to the cloud and count what each policy selects now")
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
	// SelectedNow is how many servers the policy selects in the cloud now; only with
	// --check-cloud.
	SelectedNow *int   `json:"selected_now,omitempty"`
	Warning     string `json:"warning,omitempty"`
}

// runValidate loads the file exactly as the daemon would. Exit codes: 0 valid,
// 1 invalid (every problem on stderr as FILE:LINE:COL: ...), 2 unreadable file or
// bad flags.
func runValidate(ctx context.Context, m *Main, o *validateOptions) error {
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
	// Hook programs are checked on this host: the daemon refuses to start where
	// they are missing; validate may run elsewhere (CI), so it only warns.
	for _, herr := range cfg.CheckHooks() {
		fmt.Fprintln(m.Stderr, "warning: "+herr.Error())
	}
	now := m.now()
	selected := map[string]int{}
	warnings := map[string]string{}
	if o.checkCloud {
		cl, err := wireCloud(ctx, cfg, discardLogger(), nil)
		if err != nil {
			return withExitCode(exitFailure, err)
		}
		for _, p := range cfg.Policies {
			n, err := countSelected(ctx, cl, p)
			if err != nil {
				return withExitCode(exitFailure, fmt.Errorf("policy %s: list servers: %w", p.Name, err))
			}
			selected[p.Name] = n
			if n == 0 && p.Enabled {
				warnings[p.Name] = emptySelectionWarning(p)
			}
		}
	}
	var result error
	if len(warnings) > 0 {
		verb := "select"
		if len(warnings) == 1 {
			verb = "selects"
		}
		result = withExitCode(exitFailure, fmt.Errorf("%s %s no server now", plural(len(warnings), "policy", "policies"), verb))
	}
	if o.json() {
		out := validateJSON{OK: true, Path: cfg.Path, Version: cfg.Version}
		for _, p := range cfg.Policies {
			pj := validatePolicyJSON{
				Name: p.Name, Enabled: p.Enabled, Version: p.Version, Schedule: p.Schedule.Spec,
				Timezone: p.Schedule.Location.String(), Next: nextSlots(p.Schedule, now, validateSlots),
				Warning: warnings[p.Name],
			}
			if n, ok := selected[p.Name]; ok {
				pj.SelectedNow = &n
			}
			out.Policies = append(out.Policies, pj)
		}
		if err := writeJSON(m.Stdout, out); err != nil {
			return err
		}
		return result
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
		if n, ok := selected[p.Name]; ok {
			fmt.Fprintf(m.Stdout, "  selects now: %s\n", plural(n, "server", "servers"))
		}
		if w := warnings[p.Name]; w != "" {
			fmt.Fprintf(m.Stderr, "warning: policy %s %s\n", p.Name, w)
		}
	}
	return result
}

// countSelected counts the servers p selects in the cloud now, as a slot would:
// the cloud's filter, checked again client-side.
func countSelected(ctx context.Context, cl cloud.Cloud, p *policy.Policy) (int, error) {
	sel := scheduler.CloudSelector(p.Select)
	servers, err := cl.ListServers(ctx, sel)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, s := range servers {
		if sel.Matches(s.Tags, s.AvailabilityZone) {
			n++
		}
	}
	return n, nil
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
