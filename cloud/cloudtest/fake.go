package cloudtest

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/imagekeeper/imagekeeper/cloud"
)

// FakeOptions configures a Fake. Zero durations take the defaults in parentheses.
type FakeOptions struct {
	// Now is the clock (time.Now); Advance adds to it.
	Now func() time.Time
	// ImageBuildTime is how long an image-backed server's image takes to become
	// active (2s): queued for the first quarter, then saving.
	ImageBuildTime time.Duration
	// SnapshotBuildTime is how long a volume snapshot stays creating (1s).
	SnapshotBuildTime time.Duration
	// SnapshotDeleteTime is how long a deleted snapshot stays deleting (500ms).
	SnapshotDeleteTime time.Duration
	// ImageSize is the size of a finished image-backed image (1 GiB).
	ImageSize int64
	// BootTime is how long a booted server stays BUILD (1s).
	BootTime time.Duration
}

// Fake is a stateful in-memory cloud.Cloud that follows Nova, Glance and Cinder
// where imagekeeper depends on them: Nova's tag filters, 409 for ERROR servers and
// servers with a task, createImage validation, image-backed images that take time,
// volume-backed images that are active at once with one snapshot per volume,
// deleting an image leaves its snapshots, protected images, asynchronous snapshot
// deletion that a dependent volume refuses. It also implements Controller, so it
// passes Run and can arrange state for tests of the packages that use a cloud.
// Faults become errors directly (a Fake does not retry). Safe for concurrent use.
type Fake struct {
	opts FakeOptions

	mu        sync.Mutex
	offset    time.Duration
	seq       int
	servers   map[string]*fakeServer
	order     []string
	images    map[string]*fakeImage
	snapshots map[string]*fakeSnapshot
	faults    []*Fault
	requests  map[Op]int
	creates   map[string]int
	volumes   map[string]*fakeVolume
	bootFail  string
	quota     int
}

type fakeServer struct {
	id, name, status, az, taskState string
	taskUntil                       time.Time
	tags                            []string
	volumes                         []string
	failNext                        bool
	// Boot state of a server made by CreateServer.
	imageID, flavor, fault string
	metadata               map[string]string
	buildUntil             time.Time
	buildFault             string
}

type fakeImage struct {
	id, name  string
	created   time.Time
	readyAt   time.Time // zero: static status
	status    string
	vanishAt  time.Time // non-zero: a failed snapshot disappears then
	protected bool
	size      int64
	props     map[string]string
	snapshots []cloud.SnapshotRef
}

type fakeSnapshot struct {
	id, name, volumeID string
	created            time.Time
	availableAt        time.Time
	status             string // "" = creating until availableAt, then available
	deleteAt           time.Time
	dependents         int
}

var (
	_ cloud.Cloud = (*Fake)(nil)
	_ Controller  = (*Fake)(nil)
)

// NewFake returns an empty Fake.
func NewFake(opts FakeOptions) *Fake {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.ImageBuildTime <= 0 {
		opts.ImageBuildTime = 2 * time.Second
	}
	if opts.SnapshotBuildTime <= 0 {
		opts.SnapshotBuildTime = time.Second
	}
	if opts.SnapshotDeleteTime <= 0 {
		opts.SnapshotDeleteTime = 500 * time.Millisecond
	}
	if opts.ImageSize <= 0 {
		opts.ImageSize = 1 << 30
	}
	if opts.BootTime <= 0 {
		opts.BootTime = time.Second
	}
	return &Fake{
		opts:      opts,
		servers:   map[string]*fakeServer{},
		images:    map[string]*fakeImage{},
		snapshots: map[string]*fakeSnapshot{},
		requests:  map[Op]int{},
		creates:   map[string]int{},
		volumes:   map[string]*fakeVolume{},
	}
}

func (f *Fake) now() time.Time { return f.opts.Now().Add(f.offset).UTC() }

func (f *Fake) newID(kind byte) string {
	f.seq++
	return fmt.Sprintf("%08x-0000-4000-8000-%c%011d", f.seq, kind, f.seq)
}

// fail builds the error the real adapter would return for an HTTP status.
func fail(op Op, id string, status int, kind error, reason string) error {
	return &cloud.Error{Op: strings.ReplaceAll(string(op), "_", " "), ID: id, Status: status, Kind: kind, Reason: reason}
}

// begin starts a call of op, as every method does, with the lock held: a
// cancelled ctx is refused before anything is counted (the call reaches no
// cloud); otherwise it counts the request and applies a pending fault.
func (f *Fake) begin(ctx context.Context, op Op) (*Fault, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	f.requests[op]++
	for i, ft := range f.faults {
		if ft.Op != op {
			continue
		}
		ft.Count--
		if ft.Count <= 0 {
			f.faults = append(f.faults[:i], f.faults[i+1:]...)
		}
		if ft.EmptyImageID {
			return ft, nil
		}
		kind := cloud.ErrUnavailable
		if (op == OpCreateImage || op == OpCreateServer) && ft.Status >= 500 {
			kind = cloud.ErrUnknownOutcome
		}
		return nil, fail(op, "", ft.Status, kind, http.StatusText(ft.Status))
	}
	return nil, nil
}

// ---- Controller ----

// AddServer implements Controller.
func (f *Fake) AddServer(spec ServerSpec) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := &fakeServer{id: f.newID('a'), name: spec.Name, status: spec.Status, az: spec.AZ,
		taskState: spec.TaskState, tags: append([]string(nil), spec.Tags...)}
	if s.name == "" {
		s.name = fmt.Sprintf("server-%d", len(f.order)+1)
	}
	if s.status == "" {
		s.status = "ACTIVE"
	}
	if s.az == "" {
		s.az = "nova"
	}
	for range spec.Volumes {
		s.volumes = append(s.volumes, f.newID('b'))
	}
	f.servers[s.id] = s
	f.order = append(f.order, s.id)
	return s.id
}

// SetServerStatus implements Controller.
func (f *Fake) SetServerStatus(id, status string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if s := f.servers[id]; s != nil {
		s.status = status
	}
}

// SetServerTaskState implements Controller.
func (f *Fake) SetServerTaskState(id, taskState string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if s := f.servers[id]; s != nil {
		s.taskState, s.taskUntil = taskState, time.Time{}
	}
}

// Advance implements Controller.
func (f *Fake) Advance(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.offset += d
}

// FailNextSnapshot implements Controller.
func (f *Fake) FailNextSnapshot(serverID string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if s := f.servers[serverID]; s != nil {
		s.failNext = true
	}
}

// SetImageProtected implements Controller.
func (f *Fake) SetImageProtected(imageID string, protected bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if im := f.images[imageID]; im != nil {
		im.protected = protected
	}
}

// AddVolumeFromSnapshot implements Controller.
func (f *Fake) AddVolumeFromSnapshot(snapshotID string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if s := f.snapshots[snapshotID]; s != nil {
		s.dependents++
	}
}

// ExpireTokens implements Controller; a Fake has no tokens.
func (f *Fake) ExpireTokens() {}

// InjectFault implements Controller.
func (f *Fake) InjectFault(ft Fault) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if ft.Count <= 0 {
		ft.Count = 1
	}
	f.faults = append(f.faults, &ft)
	return true
}

// Requests implements Controller: every call counts as one request.
func (f *Fake) Requests(op Op) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.requests[op]
}

// CreateImageCalls implements Controller.
func (f *Fake) CreateImageCalls(serverID string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.creates[serverID]
}

// PutImage stores an image as is (no server involved), e.g. a stamped image that
// the lineage does not know; an empty ID is generated and returned.
func (f *Fake) PutImage(im cloud.Image) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if im.ID == "" {
		im.ID = f.newID('c')
	}
	if im.Status == "" {
		im.Status = cloud.ImageActive
	}
	props := map[string]string{}
	for k, v := range im.Properties {
		props[k] = v
	}
	f.images[im.ID] = &fakeImage{id: im.ID, name: im.Name, created: f.now(), status: im.Status,
		protected: im.Protected, size: im.Size, props: props, snapshots: append([]cloud.SnapshotRef(nil), im.Snapshots...)}
	return im.ID
}

// PutSnapshot stores an available volume snapshot as is; an empty ID is generated.
func (f *Fake) PutSnapshot(s cloud.Snapshot) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if s.ID == "" {
		s.ID = f.newID('d')
	}
	if s.Status == "" {
		s.Status = cloud.SnapshotAvailable
	}
	f.snapshots[s.ID] = &fakeSnapshot{id: s.ID, name: s.Name, volumeID: s.VolumeID, created: f.now(), status: s.Status}
	return s.ID
}

// ---- state as of now (lock held) ----

func (f *Fake) server(id string) *fakeServer {
	s := f.servers[id]
	if s != nil && !s.taskUntil.IsZero() && !f.now().Before(s.taskUntil) {
		s.taskState, s.taskUntil = "", time.Time{}
	}
	if s != nil && !s.buildUntil.IsZero() && !f.now().Before(s.buildUntil) {
		s.status, s.taskState, s.buildUntil = cloud.ServerActive, "", time.Time{}
		if s.buildFault != "" {
			s.status, s.fault = cloud.ServerError, s.buildFault
		}
	}
	return s
}

func (f *Fake) image(id string) *fakeImage {
	im := f.images[id]
	if im == nil {
		return nil
	}
	now := f.now()
	if !im.vanishAt.IsZero() && !now.Before(im.vanishAt) {
		delete(f.images, id)
		return nil
	}
	if !im.readyAt.IsZero() {
		switch {
		case !now.Before(im.readyAt):
			im.status, im.size, im.readyAt = cloud.ImageActive, f.opts.ImageSize, time.Time{}
		case now.Sub(im.created) >= im.readyAt.Sub(im.created)/4:
			im.status = cloud.ImageSaving
		}
	}
	return im
}

func (f *Fake) snapshot(id string) *fakeSnapshot {
	s := f.snapshots[id]
	if s == nil {
		return nil
	}
	now := f.now()
	if !s.deleteAt.IsZero() && !now.Before(s.deleteAt) {
		if s.dependents == 0 {
			delete(f.snapshots, id)
			return nil
		}
		// Cinder's manager puts a busy snapshot back to available.
		s.status, s.deleteAt = cloud.SnapshotAvailable, time.Time{}
	}
	if s.status == "" && !now.Before(s.availableAt) {
		s.status = cloud.SnapshotAvailable
	}
	return s
}

func (s *fakeSnapshot) view() cloud.Snapshot {
	st := s.status
	if st == "" {
		st = cloud.SnapshotCreating
	}
	return cloud.Snapshot{ID: s.id, Name: s.name, VolumeID: s.volumeID, Status: st, Size: 1, CreatedAt: s.created}
}

func (im *fakeImage) view() cloud.Image {
	props := make(map[string]string, len(im.props))
	for k, v := range im.props {
		props[k] = v
	}
	return cloud.Image{ID: im.id, Name: im.name, Status: im.status, Size: im.size, Protected: im.protected,
		Properties: props, Snapshots: append([]cloud.SnapshotRef(nil), im.snapshots...), CreatedAt: im.created, UpdatedAt: im.created}
}

func (s *fakeServer) view() cloud.Server {
	md := make(map[string]string, len(s.metadata))
	for k, v := range s.metadata {
		md[k] = v
	}
	return cloud.Server{ID: s.id, Name: s.name, Status: s.status, TaskState: s.taskState, AvailabilityZone: s.az,
		Tags: append([]string{}, s.tags...), VolumeBacked: s.imageID == "" && len(s.volumes) > 0,
		Metadata: md, ImageID: s.imageID, Flavor: s.flavor, VolumeIDs: append([]string(nil), s.volumes...), Fault: s.fault}
}

// ---- cloud.Cloud ----

// ListServers implements cloud.Cloud.
func (f *Fake) ListServers(ctx context.Context, sel cloud.Selector) ([]cloud.Server, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, err := f.begin(ctx, OpListServers); err != nil {
		return nil, err
	}
	var out []cloud.Server
	for _, id := range f.order {
		s := f.server(id)
		if s != nil && sel.Matches(s.tags, s.az) {
			out = append(out, s.view())
		}
	}
	return out, nil
}

// GetServer implements cloud.Cloud.
func (f *Fake) GetServer(ctx context.Context, id string) (cloud.Server, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, err := f.begin(ctx, OpGetServer); err != nil {
		return cloud.Server{}, err
	}
	s := f.server(id)
	if s == nil {
		return cloud.Server{}, fail(OpGetServer, id, 404, cloud.ErrNotFound, fmt.Sprintf("Instance %s could not be found.", id))
	}
	return s.view(), nil
}

var metadataKey = regexp.MustCompile(`^[a-zA-Z0-9-_:. ]{1,255}$`)

// CreateImage implements cloud.Cloud.
func (f *Fake) CreateImage(ctx context.Context, serverID, name string, metadata map[string]string) (string, error) {
	// Checked before creates is counted, which begin's own check comes too late for.
	if err := ctx.Err(); err != nil {
		return "", err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.creates[serverID]++
	ft, err := f.begin(ctx, OpCreateImage)
	if err != nil {
		return "", err
	}
	if msg := validateCreateImage(name, metadata); msg != "" {
		return "", fail(OpCreateImage, serverID, 400, cloud.ErrInvalid, msg)
	}
	s := f.server(serverID)
	if s == nil {
		return "", fail(OpCreateImage, serverID, 404, cloud.ErrNotFound, fmt.Sprintf("Instance %s could not be found.", serverID))
	}
	switch {
	case !allowedVMState(s.status):
		return "", fail(OpCreateImage, serverID, 409, cloud.ErrBusy,
			fmt.Sprintf("Cannot 'createImage' instance %s while it is in vm_state %s", serverID, strings.ToLower(s.status)))
	case s.taskState != "":
		return "", fail(OpCreateImage, serverID, 409, cloud.ErrBusy,
			fmt.Sprintf("Cannot 'createImage' instance %s while it is in task_state %s", serverID, s.taskState))
	}
	now := f.now()
	im := &fakeImage{id: f.newID('c'), name: name, created: now, props: map[string]string{}}
	for k, v := range metadata {
		im.props[k] = v
	}
	failNext := s.failNext
	s.failNext = false
	if len(s.volumes) == 0 {
		im.status = cloud.ImageQueued
		im.readyAt = now.Add(f.opts.ImageBuildTime)
		im.props["image_type"] = "snapshot"
		im.props["instance_uuid"] = s.id
		s.taskState, s.taskUntil = "image_snapshot_pending", im.readyAt
		if failNext {
			im.vanishAt = now.Add(f.opts.ImageBuildTime / 2)
			s.taskUntil = im.vanishAt
		}
	} else {
		im.status = cloud.ImageActive
		var bdm []map[string]any
		for i, vol := range s.volumes {
			sn := &fakeSnapshot{id: f.newID('d'), name: "snapshot for " + name, volumeID: vol, created: now,
				availableAt: now.Add(f.opts.SnapshotBuildTime)}
			if failNext {
				sn.status = cloud.SnapshotError
			}
			f.snapshots[sn.id] = sn
			boot := i
			im.snapshots = append(im.snapshots, cloud.SnapshotRef{SnapshotID: sn.id, DeviceName: deviceName(i), BootIndex: &boot})
			bdm = append(bdm, map[string]any{"source_type": "snapshot", "destination_type": "volume",
				"snapshot_id": sn.id, "boot_index": i, "device_name": deviceName(i), "delete_on_termination": false})
		}
		b, _ := json.Marshal(bdm)
		im.props["block_device_mapping"] = string(b)
		im.props["bdm_v2"] = "True"
		if failNext {
			im.vanishAt = now
		}
	}
	f.images[im.id] = im
	if ft != nil && ft.EmptyImageID {
		return "", fail(OpCreateImage, serverID, 202, cloud.ErrUnknownOutcome, "accepted, but the answer carries no image id")
	}
	return im.id, nil
}

func deviceName(i int) string { return "/dev/vd" + string(rune('a'+i%26)) }

func allowedVMState(status string) bool {
	switch status {
	case "ACTIVE", "SHUTOFF", "PAUSED", "SUSPENDED":
		return true
	}
	return false
}

// validateCreateImage applies Nova's createImage body schema.
func validateCreateImage(name string, metadata map[string]string) string {
	switch {
	case name == "":
		return "Invalid input for field/attribute createImage. 'name' is a required property"
	case utf8.RuneCountInString(name) > 255:
		return "Invalid input for field/attribute name. Value is too long"
	case strings.TrimSpace(name) != name:
		return "Invalid input for field/attribute name. Leading/trailing whitespace"
	}
	for k, v := range metadata {
		if !metadataKey.MatchString(k) {
			return fmt.Sprintf("Invalid input for field/attribute metadata. Key %q does not match", k)
		}
		if utf8.RuneCountInString(v) > 255 {
			return fmt.Sprintf("Invalid input for field/attribute metadata. Value of %q is too long", k)
		}
	}
	return ""
}

// GetImage implements cloud.Cloud.
func (f *Fake) GetImage(ctx context.Context, id string) (cloud.Image, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, err := f.begin(ctx, OpGetImage); err != nil {
		return cloud.Image{}, err
	}
	im := f.image(id)
	if im == nil {
		return cloud.Image{}, fail(OpGetImage, id, 404, cloud.ErrNotFound, "No image found with ID "+id)
	}
	return im.view(), nil
}

// ListImages implements cloud.Cloud.
func (f *Fake) ListImages(ctx context.Context, properties map[string]string) ([]cloud.Image, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, err := f.begin(ctx, OpListImages); err != nil {
		return nil, err
	}
	ids := make([]string, 0, len(f.images))
	for id := range f.images {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	var out []cloud.Image
	for _, id := range ids {
		im := f.image(id)
		if im == nil {
			continue
		}
		match := true
		for k, v := range properties {
			if got, ok := im.props[k]; !ok || got != v {
				match = false
				break
			}
		}
		if match {
			out = append(out, im.view())
		}
	}
	return out, nil
}

// DeleteImage implements cloud.Cloud.
func (f *Fake) DeleteImage(ctx context.Context, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, err := f.begin(ctx, OpDeleteImage); err != nil {
		return err
	}
	im := f.image(id)
	switch {
	case im == nil:
		return fail(OpDeleteImage, id, 404, cloud.ErrNotFound, "No image found with ID "+id)
	case im.protected:
		return fail(OpDeleteImage, id, 403, cloud.ErrProtected, "Image "+id+" is protected and cannot be deleted.")
	}
	delete(f.images, id)
	return nil
}

// GetSnapshot implements cloud.Cloud.
func (f *Fake) GetSnapshot(ctx context.Context, id string) (cloud.Snapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, err := f.begin(ctx, OpGetSnapshot); err != nil {
		return cloud.Snapshot{}, err
	}
	s := f.snapshot(id)
	if s == nil {
		return cloud.Snapshot{}, fail(OpGetSnapshot, id, 404, cloud.ErrNotFound, "Snapshot "+id+" could not be found.")
	}
	return s.view(), nil
}

// ListSnapshots implements cloud.Cloud.
func (f *Fake) ListSnapshots(ctx context.Context) ([]cloud.Snapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, err := f.begin(ctx, OpListSnapshots); err != nil {
		return nil, err
	}
	ids := make([]string, 0, len(f.snapshots))
	for id := range f.snapshots {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	var out []cloud.Snapshot
	for _, id := range ids {
		if s := f.snapshot(id); s != nil {
			out = append(out, s.view())
		}
	}
	return out, nil
}

// DeleteSnapshot implements cloud.Cloud.
func (f *Fake) DeleteSnapshot(ctx context.Context, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, err := f.begin(ctx, OpDeleteSnapshot); err != nil {
		return err
	}
	s := f.snapshot(id)
	if s == nil {
		return fail(OpDeleteSnapshot, id, 404, cloud.ErrNotFound, "Snapshot "+id+" could not be found.")
	}
	if st := s.view().Status; st != cloud.SnapshotAvailable && st != cloud.SnapshotError {
		return fail(OpDeleteSnapshot, id, 400, cloud.ErrInUse, "Invalid snapshot: Volume Snapshot status must be available or error")
	}
	s.status, s.deleteAt = cloud.SnapshotDeleting, f.now().Add(f.opts.SnapshotDeleteTime)
	return nil
}
