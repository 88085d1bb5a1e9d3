package cloudtest

import (
	"context"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/imagekeeper/imagekeeper/cloud"
)

type fakeVolume struct {
	id, name, snapshotID, server string
	status                       string // in-use or available; deleting when deleteAt is set
	deleteAt                     time.Time
}

// fakeFlavors are the flavors a Fake knows: id to name.
var fakeFlavors = map[string]string{"1": "m1.tiny", "2": "m1.small", "3": "m1.medium"}

// uuidRe is the UUID form Nova demands of a network id.
var uuidRe = regexp.MustCompile(`^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$`)

// flavorName resolves a flavor id or name to its name, "" when unknown.
func flavorName(ref string) string {
	if n, ok := fakeFlavors[ref]; ok {
		return n
	}
	for _, n := range fakeFlavors {
		if n == ref {
			return n
		}
	}
	return ""
}

// volume returns a volume as of now (a deleted one vanishes lazily); lock held.
func (f *Fake) volume(id string) *fakeVolume {
	v := f.volumes[id]
	if v == nil {
		return nil
	}
	if !v.deleteAt.IsZero() && !f.now().Before(v.deleteAt) {
		delete(f.volumes, id)
		if sn := f.snapshots[v.snapshotID]; sn != nil && sn.dependents > 0 {
			sn.dependents--
		}
		return nil
	}
	return v
}

func (v *fakeVolume) view() cloud.Volume {
	st := v.status
	if !v.deleteAt.IsZero() {
		st = cloud.VolumeDeleting
	}
	out := cloud.Volume{ID: v.id, Name: v.name, Status: st, SnapshotID: v.snapshotID}
	if v.server != "" {
		out.AttachedTo = []string{v.server}
	}
	return out
}

// FailNextBoot implements Controller.
func (f *Fake) FailNextBoot(reason string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.bootFail = reason
}

// SetInstanceQuota implements Controller.
func (f *Fake) SetInstanceQuota(n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.quota = n
}

// VolumesFromSnapshots implements Controller.
func (f *Fake) VolumesFromSnapshots() []cloud.Volume {
	f.mu.Lock()
	defer f.mu.Unlock()
	ids := make([]string, 0, len(f.volumes))
	for id := range f.volumes {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	var out []cloud.Volume
	for _, id := range ids {
		if v := f.volume(id); v != nil {
			out = append(out, v.view())
		}
	}
	return out
}

// CreateServer implements cloud.Cloud with Nova's checks of POST /servers: a
// known flavor, an active image, a network UUID, "auto" or "none", the instances
// quota. A volume-backed image (one whose mapping names snapshots) gets a new
// volume per snapshot, attached, that depends on the snapshot; a snapshot that is
// not available makes the build fail, as Nova's block device preparation does.
func (f *Fake) CreateServer(ctx context.Context, req cloud.BootRequest) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, err := f.begin(ctx, OpCreateServer); err != nil {
		return "", err
	}
	if msg := validateCreateImage(req.Name, req.Metadata); msg != "" {
		return "", fail(OpCreateServer, "", 400, cloud.ErrInvalid, msg)
	}
	flavor := flavorName(req.Flavor)
	if flavor == "" {
		return "", fail(OpCreateServer, "", 400, cloud.ErrInvalid, fmt.Sprintf("Flavor %s could not be found.", req.Flavor))
	}
	switch req.Network {
	case "", cloud.NetworkAuto, cloud.NetworkNone:
	default:
		if !uuidRe.MatchString(req.Network) {
			return "", fail(OpCreateServer, "", 400, cloud.ErrInvalid,
				fmt.Sprintf("Bad networks format: network uuid is not in proper format (%s)", req.Network))
		}
	}
	im := f.image(req.ImageID)
	switch {
	case im == nil:
		return "", fail(OpCreateServer, "", 400, cloud.ErrInvalid, fmt.Sprintf("Image %s could not be found.", req.ImageID))
	case im.status != cloud.ImageActive:
		return "", fail(OpCreateServer, "", 400, cloud.ErrInvalid, fmt.Sprintf("Image %s is not active.", req.ImageID))
	}
	for _, ref := range im.snapshots {
		if f.snapshot(ref.SnapshotID) == nil {
			return "", fail(OpCreateServer, "", 400, cloud.ErrInvalid, fmt.Sprintf("Snapshot %s could not be found.", ref.SnapshotID))
		}
	}
	if f.quota > 0 && len(f.servers) >= f.quota {
		return "", fail(OpCreateServer, "", 403, cloud.ErrQuota, fmt.Sprintf(
			"Quota exceeded for instances: Requested 1, but already used %d of %d instances", len(f.servers), f.quota))
	}
	now := f.now()
	s := &fakeServer{id: f.newID('a'), name: req.Name, status: cloud.ServerBuild, az: req.AvailabilityZone,
		taskState: "spawning", imageID: im.id, flavor: flavor, buildUntil: now.Add(f.opts.BootTime),
		buildFault: f.bootFail}
	f.bootFail = ""
	if s.az == "" {
		s.az = "nova"
	}
	if len(req.Metadata) > 0 {
		s.metadata = make(map[string]string, len(req.Metadata))
		for k, v := range req.Metadata {
			s.metadata[k] = v
		}
	}
	for _, ref := range im.snapshots {
		sn := f.snapshot(ref.SnapshotID)
		if st := sn.view().Status; st != cloud.SnapshotAvailable && s.buildFault == "" {
			s.buildFault = "Build of instance " + s.id + " aborted: Failure prepping block device."
			continue
		}
		v := &fakeVolume{id: f.newID('e'), snapshotID: sn.id, server: s.id, status: cloud.VolumeInUse}
		sn.dependents++
		f.volumes[v.id] = v
		s.volumes = append(s.volumes, v.id)
	}
	f.servers[s.id] = s
	f.order = append(f.order, s.id)
	return s.id, nil
}

// DeleteServer implements cloud.Cloud: the server is gone at once and its volumes
// are detached and left available (delete_on_termination false).
func (f *Fake) DeleteServer(ctx context.Context, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, err := f.begin(ctx, OpDeleteServer); err != nil {
		return err
	}
	s := f.server(id)
	if s == nil {
		return fail(OpDeleteServer, id, 404, cloud.ErrNotFound, fmt.Sprintf("Instance %s could not be found.", id))
	}
	for _, vid := range s.volumes {
		if v := f.volumes[vid]; v != nil {
			v.server, v.status = "", cloud.VolumeAvailable
		}
	}
	delete(f.servers, id)
	for i, oid := range f.order {
		if oid == id {
			f.order = append(f.order[:i], f.order[i+1:]...)
			break
		}
	}
	return nil
}

// fakeConsole is the console log of a booted server.
var fakeConsole = []string{
	"[    0.000000] Linux version 5.15.0-71-generic",
	"[    1.234567] Run /init as init process",
	"Starting network: OK",
	"",
	"cirros login: ",
}

// ConsoleOutput implements cloud.Cloud: a server still building has none yet
// (Nova's 409 "not ready").
func (f *Fake) ConsoleOutput(ctx context.Context, id string, lines int) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, err := f.begin(ctx, OpConsoleOutput); err != nil {
		return "", err
	}
	s := f.server(id)
	switch {
	case s == nil:
		return "", fail(OpConsoleOutput, id, 404, cloud.ErrNotFound, fmt.Sprintf("Instance %s could not be found.", id))
	case s.status == cloud.ServerBuild:
		return "", fail(OpConsoleOutput, id, 409, cloud.ErrBusy, fmt.Sprintf("Instance %s is not ready.", id))
	}
	out := fakeConsole
	if s.status == cloud.ServerError {
		out = out[:1]
	}
	if lines > 0 && lines < len(out) {
		out = out[len(out)-lines:]
	}
	return strings.Join(out, "\n"), nil
}

// GetVolume implements cloud.Cloud.
func (f *Fake) GetVolume(ctx context.Context, id string) (cloud.Volume, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, err := f.begin(ctx, OpGetVolume); err != nil {
		return cloud.Volume{}, err
	}
	v := f.volume(id)
	if v == nil {
		return cloud.Volume{}, fail(OpGetVolume, id, 404, cloud.ErrNotFound, "Volume "+id+" could not be found.")
	}
	return v.view(), nil
}

// DeleteVolume implements cloud.Cloud: Cinder refuses an attached volume (400)
// and deletes an available one asynchronously.
func (f *Fake) DeleteVolume(ctx context.Context, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, err := f.begin(ctx, OpDeleteVolume); err != nil {
		return err
	}
	v := f.volume(id)
	switch {
	case v == nil:
		return fail(OpDeleteVolume, id, 404, cloud.ErrNotFound, "Volume "+id+" could not be found.")
	case !v.deleteAt.IsZero():
		return nil
	case v.status != cloud.VolumeAvailable:
		return fail(OpDeleteVolume, id, 400, cloud.ErrInUse, volumeInUseMessage)
	}
	v.deleteAt = f.now().Add(f.opts.SnapshotDeleteTime)
	return nil
}

// volumeInUseMessage is Cinder's answer to deleting an attached volume.
const volumeInUseMessage = "Invalid volume: Volume status must be available or error or error_restoring or " +
	"error_extending or error_managing and must not be migrating, attached, belong to a group, have snapshots, " +
	"awaiting a transfer, or be disassociated from snapshots after volume transfer."
