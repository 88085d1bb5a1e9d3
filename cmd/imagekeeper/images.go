package main

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/imagekeeper/imagekeeper/cloud"
	"github.com/imagekeeper/imagekeeper/store"
)

// imagesOptions are the flags of `imagekeeper images`.
type imagesOptions struct {
	*common
	policy     string
	server     string
	imageState string
}

// newImagesCommand builds `imagekeeper images`.
func newImagesCommand(m *Main) *cobra.Command {
	o := &imagesOptions{}
	cmd := &cobra.Command{
		Use:   "images [--policy NAME] [--server NAME|ID] [--image-state STATE]",
		Short: "list the images in the lineage",
		Long: `Lists the images the lineage records, newest first, with their policy, server,
slot, state and size. It reads the lineage only: it never asks the cloud, needs
no policy file with --state, and works while the daemon runs.`,
		Example: `  imagekeeper images --policy web-daily
  imagekeeper images --server web-1 --image-state failed -o json
  imagekeeper images --state /var/lib/imagekeeper/lineage.db`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runImages(cmd.Context(), m, o) },
	}
	o.common = newCommon(m, cmd).withConfig().withState().withOutput()
	f := cmd.Flags()
	f.StringVar(&o.policy, "policy", "", "only this policy")
	f.StringVar(&o.server, "server", "", "only this server, by name or id")
	f.StringVar(&o.imageState, "image-state", "", "only images in this state: "+statesList())
	completePolicies(cmd, o.common)
	completeValues(cmd, "image-state", imageStateNames()...)
	return cmd
}

// imageJSON is one image in `images -o json` and `why -o json`.
type imageJSON struct {
	ImageID      string    `json:"image_id"`
	Name         string    `json:"name"`
	Policy       string    `json:"policy"`
	ServerID     string    `json:"server_id"`
	ServerName   string    `json:"server_name"`
	AZ           string    `json:"availability_zone"`
	VolumeBacked bool      `json:"volume_backed"`
	Slot         time.Time `json:"slot"`
	State        string    `json:"state"`
	Reason       string    `json:"reason,omitempty"`
	Adopted      bool      `json:"adopted"`
	// Consistency is application (the policy's pre hook ran before createImage and
	// its post after the snapshot's point in time) or crash.
	Consistency   string            `json:"consistency"`
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
	// VerifiedAt and VerifyResult are the image's last restore drill.
	VerifiedAt   *time.Time `json:"verified_at,omitempty"`
	VerifyResult string     `json:"verify_result,omitempty"`
}

func toImageJSON(im store.Image, snapshots int) imageJSON {
	return imageJSON{
		ImageID: im.ImageID, Name: im.Name, Policy: im.Policy, ServerID: im.ServerID, ServerName: im.ServerName,
		AZ: im.AZ, VolumeBacked: im.VolumeBacked, Slot: im.Slot, State: string(im.State), Reason: im.Reason,
		Adopted: im.Adopted, Consistency: consistencyOf(im), Attempts: im.Attempts, SizeBytes: im.SizeBytes, Snapshots: snapshots,
		PolicyVersion: im.PolicyVersion, ConfigVersion: im.ConfigVersion, RequestedAt: im.RequestedAt,
		ActiveAt: optTime(im.ActiveAt), FailedAt: optTime(im.FailedAt), DeleteReason: im.DeleteReason, DeletedAt: optTime(im.DeletedAt),
		Metadata: im.Metadata,
	}
}

// runImages lists lineage rows, filtered by policy, server and state.
func runImages(ctx context.Context, m *Main, o *imagesOptions) error {
	f := store.ImageFilter{Policy: o.policy}
	if o.imageState != "" {
		if !slices.Contains(store.ImageStates, store.ImageState(o.imageState)) {
			return usageError("--image-state %q: use one of %s", o.imageState, statesList())
		}
		f.States = []store.ImageState{store.ImageState(o.imageState)}
	}
	wired, err := o.wire(ctx, wireOptions{policy: o.policy, store: true, lineageOnly: true})
	if err != nil {
		return err
	}
	defer wired.close()
	st := wired.store
	ims, err := st.Images(ctx, f)
	if err != nil {
		return err
	}
	if o.server != "" {
		// A name or an id: servers are known by name, the lineage keys them by id.
		ims = slices.DeleteFunc(ims, func(im store.Image) bool { return im.ServerID != o.server && im.ServerName != o.server })
	}
	verified, err := st.Verifications(ctx)
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
	if o.json() {
		out := make([]imageJSON, 0, len(ims))
		for i, im := range ims {
			j := toImageJSON(im, counts[i])
			if v, ok := verified[im.Row]; ok {
				j.VerifiedAt, j.VerifyResult = optTime(v.At), v.Result
			}
			out = append(out, j)
		}
		return writeJSON(m.Stdout, out)
	}
	if len(ims) == 0 {
		fmt.Fprintln(m.Stdout, "no images")
		return nil
	}
	t := newTable(m.Stdout, "IMAGE ID", "POLICY", "SERVER", "SLOT", "STATE", "SIZE", "SNAPSHOTS", "CONSISTENCY", "VERIFIED", "NAME", "REASON")
	for i, im := range ims {
		snaps := "-"
		if im.VolumeBacked {
			snaps = fmt.Sprint(counts[i])
		}
		t.row(orDash(im.ImageID), im.Policy, cmp.Or(im.ServerName, im.ServerID), im.Slot.UTC().Format(time.RFC3339),
			im.State, humanBytes(im.SizeBytes), snaps, consistencyOf(im), verifiedCell(verified[im.Row]), im.Name, orDash(oneLine(cmp.Or(im.DeleteReason, im.Reason), 60)))
	}
	return t.flush()
}

func statesList() string {
	return strings.Join(imageStateNames(), ", ")
}

// imageStateNames lists the states an image row can be in.
func imageStateNames() []string {
	var s []string
	for _, st := range store.ImageStates {
		s = append(s, string(st))
	}
	return s
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

// consistencyOf is the image's imagekeeper_consistency: application or crash (an
// image of a policy without hooks is crash-consistent).
func consistencyOf(im store.Image) string {
	return cmp.Or(im.Metadata[cloud.StampConsistency], cloud.ConsistencyCrash)
}

// verifiedCell is the VERIFIED column: the last drill's result and time, "-" when
// the image was never drilled.
func verifiedCell(v store.Verification) string {
	if v.At.IsZero() {
		return "-"
	}
	return v.Result + " " + v.At.UTC().Format(time.RFC3339)
}
