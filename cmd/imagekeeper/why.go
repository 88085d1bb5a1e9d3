package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"time"

	"github.com/spf13/cobra"

	"github.com/imagekeeper/imagekeeper/cloud"
	"github.com/imagekeeper/imagekeeper/store"
)

// whyOptions are the flags of `imagekeeper why`.
type whyOptions struct {
	*common
}

// newWhyCommand builds `imagekeeper why`.
func newWhyCommand(m *Main) *cobra.Command {
	o := &whyOptions{}
	cmd := &cobra.Command{
		Use:   "why IMAGE_ID",
		Short: "explain an image: where it came from, its snapshots, every decision",
		Long: `Answers "why does this image exist, why was it kept, why was it deleted" from
the lineage: the image's server, slot and policy version, the volume snapshots
behind it, and every event recorded about it.`,
		Example: `  imagekeeper why 3f2a9c1e-5b7d-4e8f-9a0b-1c2d3e4f5a6b
  imagekeeper why 3f2a9c1e-5b7d-4e8f-9a0b-1c2d3e4f5a6b -o json`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error { return runWhy(cmd.Context(), m, o, args[0]) },
	}
	o.common = newCommon(m, cmd).withConfig().withState().withOutput()
	return cmd
}

// whyJSON is `why -o json`.
type whyJSON struct {
	Image     imageJSON      `json:"image"`
	Snapshots []snapshotJSON `json:"snapshots"`
	Events    []eventJSON    `json:"events"`
}

type snapshotJSON struct {
	SnapshotID  string     `json:"snapshot_id"`
	VolumeID    string     `json:"volume_id"`
	DeviceName  string     `json:"device_name,omitempty"`
	State       string     `json:"state"`
	Reason      string     `json:"reason,omitempty"`
	SizeGB      int        `json:"size_gb"`
	AvailableAt *time.Time `json:"available_at,omitempty"`
	DeletedAt   *time.Time `json:"deleted_at,omitempty"`
}

type eventJSON struct {
	At         time.Time `json:"at"`
	Kind       string    `json:"kind"`
	SnapshotID string    `json:"snapshot_id,omitempty"`
	Message    string    `json:"message"`
}

// runWhy answers "why does this image exist, why was it kept, why was it deleted"
// from the lineage.
func runWhy(ctx context.Context, m *Main, o *whyOptions, imageID string) error {
	wired, err := o.wire(ctx, wireOptions{store: true, lineageOnly: true})
	if err != nil {
		return err
	}
	defer wired.close()
	cfg, st := wired.cfg, wired.store
	im, err := st.ImageByID(ctx, imageID)
	if errors.Is(err, store.ErrNotFound) {
		if a, aerr := st.ArchivedImageByID(ctx, imageID); aerr == nil {
			return whyArchived(ctx, m, o.json(), st, a)
		} else if !errors.Is(aerr, store.ErrNotFound) {
			return aerr
		}
		return withExitCode(exitFailure, fmt.Errorf("image %s is not in the lineage: this installation did not make it (or does not know it made it)", imageID))
	}
	if err != nil {
		return err
	}
	snaps, err := st.Snapshots(ctx, im.Row)
	if err != nil {
		return err
	}
	events, err := st.Events(ctx, store.EventFilter{ImageRow: im.Row})
	if err != nil {
		return err
	}
	if o.json() {
		out := whyJSON{Image: toImageJSON(im, len(snaps)), Snapshots: []snapshotJSON{}, Events: []eventJSON{}}
		if v, err := st.Verification(ctx, im.Row); err == nil && !v.At.IsZero() {
			out.Image.VerifiedAt, out.Image.VerifyResult = optTime(v.At), v.Result
		}
		for _, sn := range snaps {
			out.Snapshots = append(out.Snapshots, snapshotJSON{SnapshotID: sn.SnapshotID, VolumeID: sn.VolumeID,
				DeviceName: sn.DeviceName, State: string(sn.State), Reason: sn.Reason, SizeGB: sn.SizeGB,
				AvailableAt: optTime(sn.AvailableAt), DeletedAt: optTime(sn.DeletedAt)})
		}
		for _, e := range events {
			out.Events = append(out.Events, eventJSON{At: e.At, Kind: e.Kind, SnapshotID: e.SnapshotID, Message: e.Message})
		}
		return writeJSON(m.Stdout, out)
	}
	w := m.Stdout
	fmt.Fprintf(w, "image %s %q\n", im.ImageID, im.Name)
	state := string(im.State)
	if im.Reason != "" {
		state += ": " + im.Reason
	}
	fmt.Fprintf(w, "  state:     %s\n", state)
	if im.DeleteReason != "" {
		fmt.Fprintf(w, "  deletion:  %s\n", im.DeleteReason)
	}
	if v, err := st.Verification(ctx, im.Row); err == nil && !v.At.IsZero() {
		fmt.Fprintf(w, "  verified:  %s at %s (restore drill: %s)\n", v.Result, v.At.UTC().Format(time.RFC3339), orDash(v.Detail))
	} else if err == nil {
		fmt.Fprintf(w, "  verified:  never (no restore drill booted it yet)\n")
	}
	fmt.Fprintf(w, "  policy:    %s (policy version %s, config version %s)\n", im.Policy, orDash(im.PolicyVersion), orDash(im.ConfigVersion))
	backing := "image-backed"
	if im.VolumeBacked {
		backing = "volume-backed"
	}
	fmt.Fprintf(w, "  server:    %s (%s), %s, availability zone %s\n", orDash(im.ServerName), im.ServerID, backing, orDash(im.AZ))
	slot := im.Slot.UTC().Format(time.RFC3339)
	// cfg is nil when read with --state and no valid policy file; Policy is nil-safe.
	if p := cfg.Policy(im.Policy); p != nil && p.Location() != time.UTC {
		slot += " (" + im.Slot.In(p.Location()).Format("2006-01-02 15:04 MST") + ")"
	}
	fmt.Fprintf(w, "  slot:      %s\n", slot)
	how := "returned by createImage"
	if im.Adopted {
		how = "adopted: found by its stamp after an unknown outcome"
	}
	fmt.Fprintf(w, "  requested: %s (%s; id %s)\n", fmtWhen(im.RequestedAt),
		plural(im.Attempts, "createImage call", "createImage calls"), how)
	if !im.ActiveAt.IsZero() {
		fmt.Fprintf(w, "  good:      %s (%s after the request)\n", fmtWhen(im.ActiveAt), roundDuration(im.ActiveAt.Sub(im.RequestedAt)))
	}
	if !im.FailedAt.IsZero() {
		fmt.Fprintf(w, "  failed:    %s\n", fmtWhen(im.FailedAt))
	}
	if !im.DeletedAt.IsZero() {
		fmt.Fprintf(w, "  deleted:   %s\n", fmtWhen(im.DeletedAt))
	}
	switch c := consistencyOf(im); {
	case c == cloud.ConsistencyApplication:
		fmt.Fprintf(w, "  consistent: application (the pre hook succeeded before createImage; the post ran after the snapshot's point in time)\n")
	case im.Metadata[cloud.StampConsistency] == cloud.ConsistencyCrash:
		fmt.Fprintf(w, "  consistent: crash (the policy has hooks, but the pre hook failed or the post ran before the point in time: see the events)\n")
	default:
		fmt.Fprintf(w, "  consistent: crash (the policy had no hooks)\n")
	}
	fmt.Fprintf(w, "  size:      %s (%d bytes)\n", humanBytes(im.SizeBytes), im.SizeBytes)
	fmt.Fprintf(w, "  owner:     %s\n", im.Owner)
	fmt.Fprintln(w, "metadata:")
	printMetadata(w, im.Metadata)
	fmt.Fprintln(w, "snapshots:")
	if len(snaps) == 0 {
		fmt.Fprintln(w, "  (none: an image-backed server's image holds its data itself)")
	}
	for _, sn := range snaps {
		line := fmt.Sprintf("  %s  volume %s  %s  %s", sn.SnapshotID, orDash(sn.VolumeID), orDash(sn.DeviceName), sn.State)
		if sn.Reason != "" {
			line += ": " + sn.Reason
		}
		fmt.Fprintln(w, line)
	}
	fmt.Fprintln(w, "events:")
	for _, e := range events {
		fmt.Fprintf(w, "  %s  %-16s %s\n", fmtWhen(e.At), e.Kind, e.Message)
	}
	return nil
}

func printMetadata(w io.Writer, md map[string]string) {
	keys := make([]string, 0, len(md))
	for k := range md {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	if len(keys) == 0 {
		fmt.Fprintln(w, "  (none)")
	}
	for _, k := range keys {
		fmt.Fprintf(w, "  %s = %s\n", k, md[k])
	}
}

func fmtWhen(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format("2006-01-02T15:04:05.000Z")
}

// whyArchived explains an image whose lineage row lineage_retention moved to the
// archive: what the archive keeps of it, and its audit (events are never moved).
func whyArchived(ctx context.Context, m *Main, asJSON bool, st *store.Store, a store.ArchivedImage) error {
	events, err := st.Events(ctx, store.EventFilter{ImageRow: a.Row})
	if err != nil {
		return err
	}
	if asJSON {
		out := map[string]any{"image": map[string]any{"image_id": a.ImageID, "name": a.Name, "policy": a.Policy,
			"server_id": a.ServerID, "server_name": a.ServerName, "volume_backed": a.VolumeBacked, "slot": a.Slot,
			"state": string(a.State), "reason": a.Reason, "delete_reason": a.DeleteReason, "requested_at": a.RequestedAt,
			"active_at": optTime(a.ActiveAt), "deleted_at": optTime(a.DeletedAt), "compacted_at": a.CompactedAt,
			"compacted": true, "snapshots": a.Snapshots}, "events": []eventJSON{}}
		evs := []eventJSON{}
		for _, e := range events {
			evs = append(evs, eventJSON{At: e.At, Kind: e.Kind, SnapshotID: e.SnapshotID, Message: e.Message})
		}
		out["events"] = evs
		return writeJSON(m.Stdout, out)
	}
	w := m.Stdout
	fmt.Fprintf(w, "image %s %q\n", a.ImageID, a.Name)
	fmt.Fprintf(w, "  compacted: its lineage row was moved to the archive on %s (lineage_retention): only this summary and the audit remain\n",
		fmtWhen(a.CompactedAt))
	state := string(a.State)
	if a.Reason != "" {
		state += ": " + a.Reason
	}
	fmt.Fprintf(w, "  state:     %s\n", state)
	if a.DeleteReason != "" {
		fmt.Fprintf(w, "  deletion:  %s\n", a.DeleteReason)
	}
	fmt.Fprintf(w, "  policy:    %s\n", a.Policy)
	fmt.Fprintf(w, "  server:    %s (%s)\n", orDash(a.ServerName), a.ServerID)
	fmt.Fprintf(w, "  slot:      %s\n", a.Slot.UTC().Format(time.RFC3339))
	fmt.Fprintf(w, "  requested: %s\n", fmtWhen(a.RequestedAt))
	if !a.DeletedAt.IsZero() {
		fmt.Fprintf(w, "  deleted:   %s\n", fmtWhen(a.DeletedAt))
	}
	for _, sn := range a.Snapshots {
		fmt.Fprintf(w, "  snapshot:  %s\n", sn)
	}
	if len(events) > 0 {
		fmt.Fprintln(w, "  audit:")
		for _, e := range events {
			fmt.Fprintf(w, "    %s  %-22s %s\n", fmtWhen(e.At), e.Kind, e.Message)
		}
	}
	return nil
}
