package main

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/imagekeeper/imagekeeper/policy"
	"github.com/imagekeeper/imagekeeper/scheduler"
	"github.com/imagekeeper/imagekeeper/store"
)

// planOptions are the flags of `imagekeeper plan`.
type planOptions struct {
	*common
	policy  string
	horizon string
}

// newPlanCommand builds `imagekeeper plan`.
func newPlanCommand(m *Main) *cobra.Command {
	o := &planOptions{}
	cmd := &cobra.Command{
		Use:   "plan [--policy NAME] [--horizon 30d]",
		Short: "show what each policy selects, names, schedules and would prune (read-only)",
		Long: `Shows, per policy, the servers it selects now with the image name each would
get at the next slot, the next slots in the policy's zone, and what retention
would delete today. With --horizon it simulates creations and deletions over
that long with the same retention code. It changes nothing.`,
		Example: `  imagekeeper plan
  imagekeeper plan --policy web-daily --horizon 30d`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runPlan(cmd.Context(), m, o) },
	}
	o.common = newCommon(m, cmd).withConfig().withOutput().withLogs("warn")
	f := cmd.Flags()
	f.StringVar(&o.policy, "policy", "", "policy to plan (default: every policy in the file)")
	f.StringVar(&o.horizon, "horizon", "", "also simulate creations and deletions over this long (e.g. 30d)")
	completePolicies(cmd, o.common)
	return cmd
}

// planSlots is how many upcoming slots plan lists per policy.
const planSlots = 5

type planServerJSON struct {
	ID        string `json:"id"`
	Name      string `json:"name"`
	NextImage string `json:"next_image"`
	Error     string `json:"error,omitempty"`
}

type planStepJSON struct {
	Slot     time.Time `json:"slot"`
	Created  []string  `json:"created"`
	Deleted  []string  `json:"deleted"`
	Deferred int       `json:"deferred,omitempty"`
}

type planPolicyJSON struct {
	Policy    string           `json:"policy"`
	Enabled   bool             `json:"enabled"`
	Schedule  string           `json:"schedule"`
	Timezone  string           `json:"timezone"`
	NextSlots []time.Time      `json:"next_slots"`
	Servers   []planServerJSON `json:"servers"`
	Prune     *pruneReportJSON `json:"prune,omitempty"`
	Horizon   string           `json:"horizon,omitempty"`
	Steps     []planStepJSON   `json:"steps,omitempty"`
	End       map[string]int   `json:"images_at_end,omitempty"`
	Notes     []string         `json:"notes,omitempty"`
	// Warnings are what would leave servers unprotected (a selection of nothing).
	Warnings []string `json:"warnings,omitempty"`
	extra    *policyPlanExtras
}

// policyPlanExtras carries what the table needs beyond the JSON.
type policyPlanExtras struct {
	loc   *time.Location
	names map[string]string // server id -> name
}

// runPlan shows, per policy, the servers it selects now with the image name each
// would get at the next slot, the next slots in the policy's zone, what retention
// would delete today (a dry-run prune), and with --horizon a simulated sequence of
// creations and deletions from the same retention code. It changes nothing: the
// lineage is only read, and only if it exists.
func runPlan(ctx context.Context, m *Main, o *planOptions) error {
	var horizon time.Duration
	if o.horizon != "" {
		d, err := policy.ParseDuration(o.horizon)
		if err != nil || d <= 0 {
			return usageError("--horizon %q: want a positive duration such as 30d or 12h", o.horizon)
		}
		horizon = d
	}
	wired, err := o.wire(ctx, wireOptions{policy: o.policy, cloud: true})
	if err != nil {
		return err
	}
	defer wired.close()
	cfg, cl := wired.cfg, wired.cloud
	// Read the lineage only if it exists: plan must not create a database.
	if cfg.State != "" {
		if _, err := os.Stat(cfg.State); err == nil {
			if wired.store, err = wireStore(ctx, cfg); err != nil {
				return err
			}
		}
	}
	st := wired.store
	now := m.now()
	var shared *scheduler.Shared
	if st != nil {
		shared = wired.shared(scheduler.SharedOptions{Now: m.now})
	}

	var plans []planPolicyJSON
	for _, p := range wired.policies {
		pp := planPolicyJSON{Policy: p.Name, Enabled: p.Enabled, Schedule: p.Schedule.Spec, Timezone: p.Schedule.Location.String(),
			Servers: []planServerJSON{}, extra: &policyPlanExtras{loc: p.Schedule.Location, names: map[string]string{}}}
		if !p.Enabled {
			pp.Notes = append(pp.Notes, "disabled: the daemon makes no images for it")
		}
		pp.NextSlots = nextSlots(p.Schedule, now, planSlots)
		servers, err := cl.ListServers(ctx, scheduler.CloudSelector(p.Select))
		if err != nil {
			return withExitCode(exitFailure, fmt.Errorf("policy %s: list servers: %w", p.Name, err))
		}
		sort.Slice(servers, func(i, j int) bool { return servers[i].Name < servers[j].Name })
		if len(servers) == 0 {
			pp.Warnings = append(pp.Warnings, emptySelectionWarning(p))
		}
		render := func(s policy.ServerInfo, slot time.Time) (string, error) {
			name, _, err := p.Image.Render(policy.TemplateData{Server: s, Policy: policy.PolicyInfo{Name: p.Name},
				Slot: slot.In(p.Schedule.Location), Now: slot.In(p.Schedule.Location), RunID: "plan"})
			return name, err
		}
		var simServers []scheduler.SimServer
		for _, s := range servers {
			info := policy.ServerInfo{ID: s.ID, Name: s.Name, AZ: s.AvailabilityZone, Tags: s.Tags, Metadata: s.Metadata}
			ps := planServerJSON{ID: s.ID, Name: s.Name}
			if s.Status == "ERROR" {
				// A backup run skips it (Nova refuses to image a server in ERROR).
				ps.Error = "server in ERROR: skipped until it recovers"
			} else if len(pp.NextSlots) > 0 {
				if name, err := render(info, pp.NextSlots[0]); err != nil {
					ps.Error = err.Error()
				} else {
					ps.NextImage = name
				}
			}
			pp.Servers = append(pp.Servers, ps)
			pp.extra.names[s.ID] = s.Name
			simServers = append(simServers, scheduler.SimServer{ID: s.ID, Selected: true, Idle: s.Status == "ERROR", Name: func(slot time.Time) string {
				name, err := render(info, slot)
				if err != nil {
					return s.Name + " (" + err.Error() + ")"
				}
				return name
			}})
		}

		existing := map[string][]scheduler.SimImage{}
		if shared != nil {
			rep, err := scheduler.NewRetention(shared, wired.configs(), scheduler.RetentionOptions{}).
				Prune(ctx, p.Name, scheduler.PruneOptions{DryRun: true, Full: true})
			if err != nil {
				return withExitCode(exitFailure, err)
			}
			pj := toPruneJSON(rep)
			pp.Prune = &pj
			rows, err := st.Lineage(ctx, store.ImageFilter{Policy: p.Name, States: []store.ImageState{store.ImageRequested,
				store.ImageCreating, store.ImageGood, store.ImageFailed}})
			if err != nil {
				return withExitCode(exitFailure, err)
			}
			for _, row := range rows {
				status := policy.RetentionInProgress
				switch row.State {
				case store.ImageGood:
					status = policy.RetentionGood
				case store.ImageFailed:
					status = policy.RetentionFailed
				}
				existing[row.ServerID] = append(existing[row.ServerID], scheduler.SimImage{ServerID: row.ServerID, Name: row.Name,
					RetentionImage: policy.RetentionImage{ID: fmt.Sprintf("row-%d", row.Row), Time: row.Slot, Status: status,
						FailReason: row.Reason, RequestedAt: row.RequestedAt, FailedAt: row.FailedAt, LateUntil: row.LateUntil,
						WaitTimeout: p.Image.WaitTimeout}})
				if _, ok := pp.extra.names[row.ServerID]; !ok {
					pp.extra.names[row.ServerID] = row.ServerName
					simServers = append(simServers, scheduler.SimServer{ID: row.ServerID})
				}
			}
		} else {
			pp.Notes = append(pp.Notes, fmt.Sprintf("no lineage yet (state %q does not exist): nothing to prune", cfg.State))
		}

		if horizon > 0 {
			pp.Horizon = o.horizon
			steps, end, err := scheduler.SimulateRetention(p, simServers, existing, now, now.Add(horizon))
			if err != nil {
				return withExitCode(exitFailure, fmt.Errorf("policy %s: %w", p.Name, err))
			}
			for _, s := range steps {
				js := planStepJSON{Slot: s.Slot, Created: []string{}, Deleted: []string{}, Deferred: s.Deferred}
				for _, c := range s.Created {
					js.Created = append(js.Created, c.Name)
				}
				for _, d := range s.Deleted {
					js.Deleted = append(js.Deleted, d.Name)
				}
				pp.Steps = append(pp.Steps, js)
			}
			pp.End = map[string]int{}
			for sid, ims := range end {
				pp.End[cmp.Or(pp.extra.names[sid], sid)] = len(ims)
			}
		}
		plans = append(plans, pp)
	}

	if o.json() {
		return writeJSON(m.Stdout, plans)
	}
	for i, pp := range plans {
		if i > 0 {
			fmt.Fprintln(m.Stdout)
		}
		if err := printPlan(m.Stdout, pp); err != nil {
			return err
		}
	}
	return nil
}

// printPlan prints one policy's plan: what it selects, when it runs, what retention
// would delete today and, with --horizon, the simulated slots.
func printPlan(w io.Writer, pp planPolicyJSON) error {
	loc := pp.extra.loc
	fmt.Fprintf(w, "policy %s: schedule %q in %s\n", pp.Policy, pp.Schedule, pp.Timezone)
	for _, n := range pp.Notes {
		fmt.Fprintf(w, "  note: %s\n", n)
	}
	var slots []string
	for _, s := range pp.NextSlots {
		slots = append(slots, s.In(loc).Format("2006-01-02 15:04 MST"))
	}
	fmt.Fprintf(w, "  next slots: %s\n", strings.Join(slots, ", "))
	fmt.Fprintf(w, "  servers selected now: %d\n", len(pp.Servers))
	for _, s := range pp.Warnings {
		fmt.Fprintf(w, "  WARNING: %s\n", s)
	}
	if len(pp.Servers) > 0 {
		t := newTable(w, "    SERVER", "ID", "NEXT IMAGE")
		for _, s := range pp.Servers {
			next := s.NextImage
			if s.Error != "" {
				next = "(" + s.Error + ")"
			}
			t.row("    "+s.Name, s.ID, next)
		}
		if err := t.flush(); err != nil {
			return err
		}
	}
	if pp.Prune != nil {
		var del []pruneItemJSON
		for _, it := range pp.Prune.Images {
			if it.Action == string(scheduler.PruneDelete) || it.Action == string(scheduler.PruneDeferred) {
				del = append(del, it)
			}
		}
		fmt.Fprintf(w, "  retention today: %s, %d would be deleted\n", plural(len(pp.Prune.Images), "image", "images"), len(del))
		if len(del) > 0 {
			t := newTable(w, "    IMAGE", "SERVER", "AGE", "DECISION", "REASON")
			for _, it := range del {
				t.row("    "+it.Name, cmp.Or(it.ServerName, it.ServerID), formatAge(time.Duration(it.AgeSeconds)*time.Second),
					it.Action, strings.Join(it.Reasons, "; "))
			}
			if err := t.flush(); err != nil {
				return err
			}
		}
	}
	if pp.Horizon != "" {
		created, deleted := 0, 0
		for _, s := range pp.Steps {
			created += len(s.Created)
			deleted += len(s.Deleted)
		}
		fmt.Fprintf(w, "  horizon %s: %s, %s created, %d deleted\n", pp.Horizon, plural(len(pp.Steps), "slot", "slots"),
			plural(created, "image", "images"), deleted)
		for _, s := range pp.Steps {
			line := fmt.Sprintf("    %s  +%d", s.Slot.In(loc).Format("2006-01-02 15:04 MST"), len(s.Created))
			if len(s.Deleted) > 0 {
				line += fmt.Sprintf("  -%d: %s", len(s.Deleted), strings.Join(s.Deleted, ", "))
			}
			if s.Deferred > 0 {
				line += fmt.Sprintf("  (%d deferred by max_deletions_per_run)", s.Deferred)
			}
			fmt.Fprintln(w, line)
		}
		names := make([]string, 0, len(pp.End))
		for n := range pp.End {
			names = append(names, n)
		}
		sort.Strings(names)
		var ends []string
		for _, n := range names {
			ends = append(ends, fmt.Sprintf("%s %d", n, pp.End[n]))
		}
		fmt.Fprintf(w, "  images per server at the end: %s\n", strings.Join(ends, ", "))
	}
	return nil
}

// emptySelectionWarning words a policy that selects no server now, for plan and
// validate --check-cloud: its slots would be recorded empty and protect nothing.
func emptySelectionWarning(p *policy.Policy) string {
	return "selects no server now (select: " + scheduler.DescribeSelector(scheduler.CloudSelector(p.Select)) +
		"): every slot would be empty and back up nothing; check the selector and the servers' tags"
}
