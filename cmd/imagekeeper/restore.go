package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/imagekeeper/imagekeeper/cloud"
	"github.com/imagekeeper/imagekeeper/scheduler"
	"github.com/imagekeeper/imagekeeper/store"
)

// Lineage events of a restore.
const (
	eventRestored       = "restored"
	eventRestoreFailed  = "restore_failed"
	eventRestoreUnknown = "restore_unknown"
)

// restoreMetadataKey is the server metadata key naming the image a restored server
// came from, so that a restore whose answer was lost can be found.
const restoreMetadataKey = "imagekeeper_restored_from"

// defaultRestorePoll is how often `restore --wait` polls the new server unless
// Main.PollInterval says otherwise.
const defaultRestorePoll = 2 * time.Second

// restoreOptions are the flags of `imagekeeper restore`.
type restoreOptions struct {
	*common
	name, flavor, network, az string
	noNetwork, wait, force    bool
	timeout                   time.Duration
}

// newRestoreCommand builds `imagekeeper restore`.
func newRestoreCommand(m *Main) *cobra.Command {
	o := &restoreOptions{}
	cmd := &cobra.Command{
		Use:   "restore IMAGE_ID --name NAME [--flavor F] [--network N | --no-network] [--availability-zone Z] [--wait]",
		Short: "boot a new server from one of our images",
		Long: `Boots a new server from an image in the lineage with Nova's POST /servers
(imageRef). For a volume-backed image Nova makes the new server's volumes from the
Cinder snapshots the image names; they are not deleted with the server.

The flavor and availability zone default to those of the image's original server
when it still exists (the zone recorded in the lineage otherwise; the flavor is
then required). Images that are not good in the lineage (failed, hollow, being
deleted) are refused unless --force. With --wait it follows the server from BUILD
to ACTIVE and prints Nova's fault when it ends in ERROR. The lineage records a
"restored" event on the image row with the new server's id.`,
		Example: `  imagekeeper restore 3f2a9c1e-5b7d-4e8f-9a0b-1c2d3e4f5a6b --name web-1-restored --wait
  imagekeeper restore 3f2a9c1e-5b7d-4e8f-9a0b-1c2d3e4f5a6b --name probe --flavor m1.small --no-network`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if o.name == "" {
				return usageError("--name is required")
			}
			if o.noNetwork && o.network != "" {
				return usageError("--network and --no-network exclude each other")
			}
			if handled, err := o.viaDaemon(cmd.Context(), cmd, args); handled {
				return err
			}
			return runRestore(cmd.Context(), m, o, args[0])
		},
	}
	o.common = newCommon(m, cmd).withConfig().withOutput().withLogs("warn")
	f := cmd.Flags()
	f.StringVar(&o.name, "name", "", "name of the new server (required)")
	f.StringVar(&o.flavor, "flavor", "", "flavor id or name (default: the original server's)")
	f.StringVar(&o.network, "network", "", "network UUID to attach (default: Nova's \"auto\")")
	f.BoolVar(&o.noNetwork, "no-network", false, "boot without any network")
	f.StringVar(&o.az, "availability-zone", "", "availability zone (default: the original server's)")
	f.BoolVar(&o.wait, "wait", false, "wait until the server is ACTIVE (or ERROR), showing progress")
	f.BoolVar(&o.force, "force", false, "restore an image that is not good in the lineage")
	f.DurationVar(&o.timeout, "timeout", 30*time.Minute, "with --wait: how long to wait for ACTIVE")
	return cmd
}

// restoreJSON is `restore -o json`.
type restoreJSON struct {
	ImageID          string `json:"image_id"`
	ServerID         string `json:"server_id"`
	Name             string `json:"name"`
	Flavor           string `json:"flavor"`
	AvailabilityZone string `json:"availability_zone,omitempty"`
	Network          string `json:"network"`
	Status           string `json:"status"`
	Fault            string `json:"fault,omitempty"`
}

// runRestore checks the image in the lineage, fills the defaults from the original
// server, boots, records the event and, with --wait, follows the build.
func runRestore(ctx context.Context, m *Main, o *restoreOptions, imageID string) error {
	wired, err := o.wire(ctx, wireOptions{store: true, exclusive: true, cloud: true})
	if err != nil {
		return err
	}
	defer wired.close()
	st, cl := wired.store, wired.cloud
	im, err := st.ImageByID(ctx, imageID)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return withExitCode(exitFailure, fmt.Errorf("image %s is not in the lineage: imagekeeper restores only images it made", imageID))
	case err != nil:
		return withExitCode(exitFailure, err)
	}
	if im.State != store.ImageGood && !o.force {
		state := string(im.State)
		if im.Failure != "" {
			state += " (" + string(im.Failure) + ")"
		}
		if im.Reason != "" {
			state += ": " + im.Reason
		}
		return withExitCode(exitFailure, fmt.Errorf("image %s is not good in the lineage (%s): it may not boot; --force to try anyway", imageID, state))
	}
	req := cloud.BootRequest{Name: o.name, ImageID: imageID, Flavor: o.flavor, AvailabilityZone: o.az,
		Network: o.network, Metadata: map[string]string{restoreMetadataKey: imageID}}
	if o.noNetwork {
		req.Network = cloud.NetworkNone
	}
	if req.Network == "" {
		req.Network = cloud.NetworkAuto
	}
	if req.Flavor == "" || req.AvailabilityZone == "" {
		orig, err := cl.GetServer(ctx, im.ServerID)
		switch {
		case err == nil:
			if req.Flavor == "" {
				req.Flavor = orig.Flavor
			}
			if req.AvailabilityZone == "" {
				req.AvailabilityZone = orig.AvailabilityZone
			}
		case errors.Is(err, cloud.ErrNotFound):
			if req.Flavor == "" {
				return withExitCode(exitFailure, fmt.Errorf("the original server %s of image %s no longer exists: give --flavor", im.ServerID, imageID))
			}
			// The image boots only in its server's zone (section 1 of the design).
			if req.AvailabilityZone == "" {
				req.AvailabilityZone = im.AZ
			}
		default:
			return withExitCode(exitFailure, fmt.Errorf("look up the original server %s: %w", im.ServerID, err))
		}
	}
	w := m.Stdout
	if !o.json() {
		backing := "image-backed"
		if im.VolumeBacked {
			backing = "volume-backed"
		}
		fmt.Fprintf(w, "restoring image %s (%s, policy %s, server %s) as %q: flavor %s, availability zone %s, network %s\n",
			imageID, backing, im.Policy, orDash(im.ServerName), o.name, req.Flavor, orDash(req.AvailabilityZone), req.Network)
	}
	ev := store.Event{ImageRow: im.Row, ImageID: imageID, Policy: im.Policy, ServerID: im.ServerID}
	id, err := cl.CreateServer(ctx, req)
	if err != nil {
		ev.Kind, ev.Message = eventRestoreFailed, "restore as "+o.name+" refused: "+cloud.Reason(err)
		if errors.Is(err, cloud.ErrUnknownOutcome) {
			ev.Kind = eventRestoreUnknown
			ev.Message = fmt.Sprintf("restore as %s: outcome unknown (%s); a server with metadata %s=%s may exist", o.name, cloud.Reason(err), restoreMetadataKey, imageID)
		}
		if _, aerr := st.AddEvent(ctx, ev); aerr != nil {
			wired.log.Warn("record restore event", scheduler.LogKeyImageID, imageID, "error", aerr)
		}
		return withExitCode(exitFailure, restoreError(err, o.name, imageID))
	}
	ev.Kind = eventRestored
	ev.Message = fmt.Sprintf("restored as server %s (%q, flavor %s, availability zone %s, network %s)", id, o.name, req.Flavor, orDash(req.AvailabilityZone), req.Network)
	if _, err := st.AddEvent(ctx, ev); err != nil {
		return withExitCode(exitFailure, fmt.Errorf("server %s was created, but the lineage event failed: %w", id, err))
	}
	out := restoreJSON{ImageID: imageID, ServerID: id, Name: o.name, Flavor: req.Flavor,
		AvailabilityZone: req.AvailabilityZone, Network: req.Network, Status: cloud.ServerBuild}
	if !o.json() {
		fmt.Fprintf(w, "server %s created\n", id)
	}
	if o.wait {
		s, err := waitForServer(ctx, cl, id, o.timeout, cmp.Or(m.PollInterval, defaultRestorePoll), func(s cloud.Server) {
			if !o.json() {
				line := "  " + s.Status
				if s.TaskState != "" {
					line += " (" + s.TaskState + ")"
				}
				fmt.Fprintln(w, line)
			}
		})
		out.Status, out.Fault = s.Status, s.Fault
		if err != nil {
			if o.json() {
				_ = writeJSON(w, out)
			}
			if _, aerr := st.AddEvent(ctx, store.Event{Kind: eventRestoreFailed, ImageRow: im.Row, ImageID: imageID,
				Policy: im.Policy, ServerID: im.ServerID, Message: fmt.Sprintf("server %s: %v", id, err)}); aerr != nil {
				wired.log.Warn("record restore event", scheduler.LogKeyImageID, imageID, "error", aerr)
			}
			return withExitCode(exitFailure, fmt.Errorf("server %s: %w", id, err))
		}
		if !o.json() {
			fmt.Fprintf(w, "server %s is ACTIVE\n", id)
		}
	}
	if o.json() {
		return writeJSON(w, out)
	}
	return nil
}

// restoreError words a refused boot for a person: quotas by name, Nova's own
// message otherwise.
func restoreError(err error, name, imageID string) error {
	switch {
	case errors.Is(err, cloud.ErrQuota):
		return fmt.Errorf("the project's quota refuses another server: %s", cloud.Reason(err))
	case errors.Is(err, cloud.ErrUnknownOutcome):
		return fmt.Errorf("the boot request may or may not have made a server (%s): look for a server named %q with metadata %s=%s before trying again",
			cloud.Reason(err), name, restoreMetadataKey, imageID)
	case errors.Is(err, cloud.ErrInvalid):
		return fmt.Errorf("Nova refused the boot request: %s", cloud.Reason(err))
	}
	return fmt.Errorf("boot from image %s: %w", imageID, err)
}

// errBootFailed is the error of a server that ended in ERROR.
var errBootFailed = errors.New("went to ERROR")

// waitForServer polls a new server until it is ACTIVE, ERROR or gone, or timeout
// passes, calling progress whenever its status or task state changes.
func waitForServer(ctx context.Context, cl cloud.Cloud, id string, timeout, every time.Duration, progress func(cloud.Server)) (cloud.Server, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last cloud.Server
	seen := false
	for {
		s, err := cl.GetServer(ctx, id)
		switch {
		case err == nil:
			if !seen || s.Status != last.Status || s.TaskState != last.TaskState {
				progress(s)
			}
			seen, last = true, s
			switch s.Status {
			case cloud.ServerActive:
				return s, nil
			case cloud.ServerError:
				fault := s.Fault
				if fault == "" {
					fault = "Nova gave no fault message"
				}
				return s, fmt.Errorf("%w: %s", errBootFailed, fault)
			}
		case errors.Is(err, cloud.ErrNotFound):
			return last, fmt.Errorf("the server disappeared while building: %w", err)
		case ctx.Err() != nil:
		case !cloud.Retryable(err):
			return last, err
		}
		t := time.NewTimer(every)
		select {
		case <-ctx.Done():
			t.Stop()
			return last, fmt.Errorf("not ACTIVE after %s (status %s)", timeout, orDash(last.Status))
		case <-t.C:
		}
	}
}
