package main

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/imagekeeper/imagekeeper/store"
)

func init() {
	register(command{
		name:    "images",
		summary: "list the images in the lineage",
		run:     runImages,
	})
}

// imageJSON is one image in `images -o json` and `why -o json`.
type imageJSON struct {
	ImageID       string            `json:"image_id"`
	Name          string            `json:"name"`
	Policy        string            `json:"policy"`
	ServerID      string            `json:"server_id"`
	ServerName    string            `json:"server_name"`
	AZ            string            `json:"availability_zone"`
	VolumeBacked  bool              `json:"volume_backed"`
	Slot          time.Time         `json:"slot"`
	State         string            `json:"state"`
	Reason        string            `json:"reason,omitempty"`
	Adopted       bool              `json:"adopted"`
	Attempts      int               `json:"attempts"`
	SizeBytes     int64             `json:"size_bytes"`
	Snapshots     int               `json:"snapshots"`
	PolicyVersion string            `json:"policy_version"`
	ConfigVersion string            `json:"config_version"`
	RequestedAt   time.Time         `json:"requested_at"`
	ActiveAt      *time.Time        `json:"active_at,omitempty"`
	FailedAt      *time.Time        `json:"failed_at,omitempty"`
	DeleteReason  string            `json:"delete_reason,omitempty"`
	DeletedAt     *time.Time        `json:"deleted_at,omitempty"`
	Metadata      map[string]string `json:"metadata,omitempty"`
}

func toImageJSON(im store.Image, snapshots int) imageJSON {
	return imageJSON{
		ImageID: im.ImageID, Name: im.Name, Policy: im.Policy, ServerID: im.ServerID, ServerName: im.ServerName,
		AZ: im.AZ, VolumeBacked: im.VolumeBacked, Slot: im.Slot, State: string(im.State), Reason: im.Reason,
		Adopted: im.Adopted, Attempts: im.Attempts, SizeBytes: im.SizeBytes, Snapshots: snapshots,
		PolicyVersion: im.PolicyVersion, ConfigVersion: im.ConfigVersion, RequestedAt: im.RequestedAt,
		ActiveAt: optTime(im.ActiveAt), FailedAt: optTime(im.FailedAt), DeleteReason: im.DeleteReason, DeletedAt: optTime(im.DeletedAt),
		Metadata: im.Metadata,
	}
}

// runImages lists lineage rows, filtered by policy, server and state.
func runImages(ctx context.Context, m *Main, args []string) error {
	fs := newFlagSet(m, "images").withConfig().withOutput()
	pol := fs.String("policy", "", "only this policy")
	server := fs.String("server", "", "only this server id")
	state := fs.String("state", "", "only this state: "+statesList())
	if err := fs.parse(args, 0); err != nil {
		return err
	}
	f := store.ImageFilter{Policy: *pol, ServerID: *server}
	if *state != "" {
		if !slices.Contains(store.ImageStates, store.ImageState(*state)) {
			return usageError("--state %q: use one of %s", *state, statesList())
		}
		f.States = []store.ImageState{store.ImageState(*state)}
	}
	wired, err := fs.wire(ctx, wireOptions{store: true})
	if err != nil {
		return err
	}
	defer wired.close()
	st := wired.store
	ims, err := st.Images(ctx, f)
	if err != nil {
		return err
	}
	counts := make([]int, len(ims))
	for i, im := range ims {
		if im.VolumeBacked {
			snaps, err := st.Snapshots(ctx, im.Row)
			if err != nil {
				return err
			}
			counts[i] = len(snaps)
		}
	}
	if fs.json() {
		out := make([]imageJSON, 0, len(ims))
		for i, im := range ims {
			out = append(out, toImageJSON(im, counts[i]))
		}
		return writeJSON(m.Stdout, out)
	}
	if len(ims) == 0 {
		fmt.Fprintln(m.Stdout, "no images")
		return nil
	}
	t := newTable(m.Stdout, "IMAGE ID", "POLICY", "SERVER", "SLOT", "STATE", "SIZE", "SNAPSHOTS", "NAME", "REASON")
	for i, im := range ims {
		snaps := "-"
		if im.VolumeBacked {
			snaps = fmt.Sprint(counts[i])
		}
		t.row(orDash(im.ImageID), im.Policy, cmp.Or(im.ServerName, im.ServerID), im.Slot.UTC().Format(time.RFC3339),
			im.State, humanBytes(im.SizeBytes), snaps, im.Name, orDash(oneLine(cmp.Or(im.DeleteReason, im.Reason), 60)))
	}
	return t.flush()
}

func statesList() string {
	var s []string
	for _, st := range store.ImageStates {
		s = append(s, string(st))
	}
	return strings.Join(s, ", ")
}

// humanBytes prints a size in binary units.
func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// oneLine keeps table cells on one line and at most n runes.
func oneLine(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	r := []rune(s)
	if len(r) > n {
		return string(r[:n-1]) + "…"
	}
	return s
}
