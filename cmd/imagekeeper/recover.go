package main

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/imagekeeper/imagekeeper/scheduler"
)

// recoverOptions are the flags of `imagekeeper recover`.
type recoverOptions struct {
	*common
	owner string
	force bool
}

// newRecoverCommand builds `imagekeeper recover`.
func newRecoverCommand(m *Main) *cobra.Command {
	o := &recoverOptions{}
	cmd := &cobra.Command{
		Use:   "recover --owner ID [--force]",
		Short: "rebuild a lost lineage from the stamps on the cloud's images",
		Long: `Rebuilds the lineage after lineage.db was lost: every image in the cloud stamped
with owner ID gets its row back (policy, server and slot from the stamp, adopted,
an image_recovered event), its state read from Glance and Cinder, and the database
takes ID as its owner id, so that the daemon prunes and reports those images again.
The owner id is in the daemon's start log line (owner=...) and on every image as
the imagekeeper_owner property.

It refuses to run beside the daemon (stop it first) and into a database that already
holds images or slots unless --force is given: then it adds only the rows that are
missing.`,
		Example: `  systemctl stop imagekeeper
  imagekeeper recover --owner 3f0c9a1e2b7d4c58a6e1f0b2c3d4e5f6
  systemctl start imagekeeper`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runRecover(cmd.Context(), m, o) },
	}
	o.common = newCommon(m, cmd).withConfig().withLogs("warn")
	cmd.Flags().StringVar(&o.owner, "owner", "", "the owner id of the lost lineage (required)")
	cmd.Flags().BoolVar(&o.force, "force", false, "recover into a database that is not empty, adding only the missing rows")
	return cmd
}

// runRecover rebuilds the lineage of --owner from the cloud's stamps and prints
// every image it recovered or skipped.
func runRecover(ctx context.Context, m *Main, o *recoverOptions) error {
	if o.owner == "" {
		return usageError("--owner is required: the owner id of the lost lineage (the imagekeeper_owner property of its images)")
	}
	// The lock first: a daemon writing beside a recovery would make images under
	// another owner id while the rows are being rebuilt.
	wired, err := o.wire(ctx, wireOptions{store: true, exclusive: true})
	if err != nil {
		return err
	}
	defer wired.close()
	st := wired.store
	empty, err := st.Empty(ctx)
	if err != nil {
		return withExitCode(exitFailure, err)
	}
	if !empty && !o.force {
		return withExitCode(exitFailure, fmt.Errorf("the lineage %s is not empty (owner %s); recovering into it "+
			"mixes two histories: use a fresh database, or --force to add only the missing rows", wired.cfg.State, st.Owner()))
	}
	if prev := st.Owner(); prev != o.owner {
		if !empty {
			fmt.Fprintf(m.Stderr, "warning: the lineage's owner id changes from %s to %s; its rows of owner %s are "+
				"no longer pruned by this installation\n", prev, o.owner, prev)
		}
		if err := st.SetOwner(ctx, o.owner); err != nil {
			return withExitCode(exitUsage, err)
		}
	}
	if wired.cloud, err = wireCloud(ctx, wired.cfg, o.log, nil); err != nil {
		return withExitCode(exitFailure, err)
	}
	rep, err := scheduler.NewReconciler(wired.shared(scheduler.SharedOptions{PollInterval: m.PollInterval, MaxPollInterval: 4 * m.PollInterval})).Recover(ctx, wired.cfg)
	if rep != nil {
		printRecover(m, rep)
	}
	if err != nil {
		return withExitCode(exitFailure, err)
	}
	return nil
}

func printRecover(m *Main, rep *scheduler.RecoverReport) {
	w := m.Stdout
	fmt.Fprintf(w, "owner %s: %s stamped in the cloud, %d recovered, %d skipped\n", rep.Owner,
		plural(rep.CloudImages, "image", "images"), len(rep.Recovered), len(rep.Skipped))
	states := map[string]int{}
	for _, ri := range rep.Recovered {
		states[string(ri.State)]++
		line := fmt.Sprintf("recovered %s: policy %s, server %s, slot %s: %s", ri.ImageID, ri.Policy, ri.ServerID,
			ri.Slot.UTC().Format(time.RFC3339), ri.State)
		if ri.Note != "" {
			line += " (" + ri.Note + ")"
		}
		fmt.Fprintln(w, line)
	}
	for _, ri := range rep.Skipped {
		fmt.Fprintf(w, "skipped %s: %s\n", ri.ImageID, ri.Note)
	}
	if len(rep.Recovered) > 0 {
		fmt.Fprintf(w, "lineage rows by state: good %d, failed %d, creating %d; the daemon goes on as owner %s\n",
			states["good"], states["failed"], states["creating"], rep.Owner)
	}
}
