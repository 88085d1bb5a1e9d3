package main

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/imagekeeper/imagekeeper/policy"
	"github.com/imagekeeper/imagekeeper/store"
)

// statusOptions are the flags of `imagekeeper status`.
type statusOptions struct {
	*common
}

// newStatusCommand builds `imagekeeper status`.
func newStatusCommand(m *Main) *cobra.Command {
	o := &statusOptions{}
	cmd := &cobra.Command{
		Use:   "status [--config FILE | --state PATH]",
		Short: "show each policy's last and next slot, servers without a good image, and the daemon",
		Long: `Shows, per policy, the last slot and its outcome, the next slot, the servers
without a good image and the images being made now; the installation's owner id;
and, when a daemon serves the lineage, its version and the version of the config
it runs (status then comes from the daemon itself). It reads the lineage only: it
works with --state and no policy file, and with a policy file that no longer
validates.`,
		Example: `  imagekeeper status
  imagekeeper status --state /var/lib/imagekeeper/lineage.db -o json`,
		Args: noArgs,
		RunE: inDaemonOr(o, func(cmd *cobra.Command, args []string) error {
			return runStatus(cmd.Context(), m, o)
		}),
	}
	o.common = newCommon(m, cmd).withConfig().withState().withOutput()
	return cmd
}

// statusJSON is `status -o json`.
type statusJSON struct {
	Lineage       string             `json:"lineage"`
	Owner         string             `json:"owner"`
	Daemon        *statusDaemonJSON  `json:"daemon"`
	ConfigVersion string             `json:"config_version,omitempty"`
	Policies      []statusPolicyJSON `json:"policies"`
	Now           time.Time          `json:"now"`
	note          string             // why there is no daemon or config, for the table
	loc           map[string]*time.Location
}

type statusDaemonJSON struct {
	Version       string    `json:"version"`
	Revision      string    `json:"revision"`
	ConfigVersion string    `json:"config_version"`
	StartedAt     time.Time `json:"started_at"`
}

type statusPolicyJSON struct {
	Policy string `json:"policy"`
	// InConfig is false for a policy the lineage has and the config no longer (or,
	// without a config, cannot be told).
	InConfig    bool               `json:"in_config"`
	Enabled     bool               `json:"enabled"`
	LastSlot    *time.Time         `json:"last_slot,omitempty"`
	LastTrigger string             `json:"last_trigger,omitempty"`
	LastOutcome string             `json:"last_outcome,omitempty"`
	LastReason  string             `json:"last_reason,omitempty"`
	NextSlot    *time.Time         `json:"next_slot,omitempty"`
	WithoutGood []statusServerJSON `json:"servers_without_good_image"`
	InFlight    int                `json:"images_in_flight"`
}

type statusServerJSON struct {
	ID   string `json:"id"`
	Name string `json:"name,omitempty"`
}

// runStatus reads the lineage (and the config, when there is one) and prints the
// status; inside the daemon it adds the daemon's own.
func runStatus(ctx context.Context, m *Main, o *statusOptions) error {
	wired, err := o.wire(ctx, wireOptions{store: true, lineageOnly: true})
	if err != nil {
		return err
	}
	defer wired.close()
	st := wired.store
	out := statusJSON{Lineage: st.Path(), Owner: st.Owner(), Now: time.Now().UTC(), Policies: []statusPolicyJSON{},
		loc: map[string]*time.Location{}}
	if d := wired.daemon; d != nil {
		out.Daemon = &statusDaemonJSON{Version: d.version, Revision: d.revision, StartedAt: d.started.UTC()}
		if wired.cfg != nil {
			out.Daemon.ConfigVersion = wired.cfg.Version
		}
	} else {
		out.note = "no daemon listens on " + controlSocketPath(st.Path())
	}
	if wired.cfg != nil {
		out.ConfigVersion = wired.cfg.Version
	}

	names, err := statusPolicies(ctx, st, wired.cfg)
	if err != nil {
		return err
	}
	for _, name := range names {
		ps, err := policyStatus(ctx, st, wired.cfg, name, out.Now)
		if err != nil {
			return err
		}
		if p := wired.cfg.Policy(name); p != nil && p.Schedule != nil {
			out.loc[name] = p.Schedule.Location
		}
		out.Policies = append(out.Policies, ps)
	}
	if o.json() {
		return writeJSON(m.Stdout, out)
	}
	return printStatus(m.Stdout, out)
}

// statusPolicies lists the policies of the config, then those only the lineage
// has, each once.
func statusPolicies(ctx context.Context, st *store.Store, cfg *policy.Config) ([]string, error) {
	var names []string
	if cfg != nil {
		for _, p := range cfg.Policies {
			names = append(names, p.Name)
		}
	}
	inLineage, err := st.Policies(ctx)
	if err != nil {
		return nil, err
	}
	var extra []string
	for _, name := range inLineage {
		if !slices.Contains(names, name) {
			extra = append(extra, name)
		}
	}
	sort.Strings(extra)
	return append(names, extra...), nil
}

// policyStatus is one policy's line of status.
func policyStatus(ctx context.Context, st *store.Store, cfg *policy.Config, name string, now time.Time) (statusPolicyJSON, error) {
	ps := statusPolicyJSON{Policy: name, WithoutGood: []statusServerJSON{}}
	if p := cfg.Policy(name); p != nil {
		ps.InConfig, ps.Enabled = true, p.Enabled
		if p.Enabled && p.Schedule != nil {
			ps.NextSlot = optTime(p.Schedule.Next(now).UTC())
		}
	}
	slots, err := st.Slots(ctx, store.SlotFilter{Policy: name, Limit: 1})
	if err != nil {
		return ps, err
	}
	if len(slots) > 0 {
		s := slots[0]
		ps.LastSlot, ps.LastTrigger, ps.LastOutcome, ps.LastReason = optTime(s.Slot.UTC()), s.Trigger, string(s.Outcome), s.Reason
	}
	points, err := st.NewestGoodPerServer(ctx, name)
	if err != nil {
		return ps, err
	}
	for _, pt := range points {
		if !pt.NewestGood.IsZero() {
			continue
		}
		srv := statusServerJSON{ID: pt.ServerID}
		if ims, err := st.Images(ctx, store.ImageFilter{Policy: name, ServerID: pt.ServerID, Limit: 1}); err == nil && len(ims) > 0 {
			srv.Name = ims[0].ServerName
		}
		ps.WithoutGood = append(ps.WithoutGood, srv)
	}
	inflight, err := st.Images(ctx, store.ImageFilter{Policy: name, States: []store.ImageState{store.ImageRequested, store.ImageCreating}})
	if err != nil {
		return ps, err
	}
	ps.InFlight = len(inflight)
	return ps, nil
}

// printStatus prints the status for people.
func printStatus(w io.Writer, s statusJSON) error {
	fmt.Fprintf(w, "lineage: %s (owner %s)\n", s.Lineage, s.Owner)
	if d := s.Daemon; d != nil {
		fmt.Fprintf(w, "daemon:  running, version %s (revision %s), config version %s, up %s\n",
			d.Version, d.Revision, orDash(d.ConfigVersion), roundDuration(s.Now.Sub(d.StartedAt)))
	} else {
		fmt.Fprintf(w, "daemon:  not running (%s)\n", s.note)
	}
	if s.ConfigVersion == "" {
		fmt.Fprintln(w, "config:  none read (next slots unknown)")
	}
	if len(s.Policies) == 0 {
		fmt.Fprintln(w, "no policies")
		return nil
	}
	t := newTable(w, "POLICY", "LAST SLOT", "OUTCOME", "NEXT SLOT", "IN FLIGHT", "WITHOUT A GOOD IMAGE")
	for _, p := range s.Policies {
		last, next := "-", "-"
		if p.LastSlot != nil {
			last = p.LastSlot.Format(time.RFC3339)
		}
		switch {
		case p.NextSlot != nil:
			next = p.NextSlot.Format(time.RFC3339)
			if loc := s.loc[p.Policy]; loc != nil && loc != time.UTC {
				next += " (" + p.NextSlot.In(loc).Format("15:04 MST") + ")"
			}
		case p.InConfig && !p.Enabled:
			next = "disabled"
		case !p.InConfig && s.ConfigVersion != "":
			next = "not in the config"
		}
		var without []string
		for _, srv := range p.WithoutGood {
			without = append(without, cmp.Or(srv.Name, srv.ID))
		}
		outcome := orDash(p.LastOutcome)
		if p.LastTrigger != "" && p.LastTrigger != "scheduled" {
			outcome += " (" + p.LastTrigger + ")"
		}
		t.row(p.Policy, last, outcome, next, p.InFlight, orDash(oneLine(strings.Join(without, ", "), 60)))
	}
	return t.flush()
}
