package simcloud

import (
	"context"
	crand "crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"
)

// Sim is a running (or ready to run) simulated OpenStack. All methods are safe for
// concurrent use.
type Sim struct {
	opts Options

	mu        sync.Mutex
	baseURL   string
	offset    time.Duration
	idRand    *rand.Rand // ids of servers, images, snapshots, volumes
	tokenRand *rand.Rand // tokens: separate so re-auth does not shift other ids
	// computeProjectID puts the project id in the catalog's compute endpoint
	// (Options.ComputeProjectID, changed at run time by SetComputeProjectID).
	computeProjectID bool
	faultRand        *rand.Rand // error-rate draws
	seq              int64
	servers          map[string]*server
	images           map[string]*image
	snapshots        map[string]*snapshot
	tokens           map[string]tokenInfo
	faults           map[int]*Fault
	faultSeq         int
	requests         map[string]int
	createCalls      map[string]int
	vols             map[string]*volume // volumes made from snapshots by POST /servers
	bootFail         string

	ln      net.Listener
	srv     *http.Server
	closed  chan struct{}
	closeMu sync.Once
}

// tokenInfo is what the simulator remembers of an issued token.
type tokenInfo struct {
	expires time.Time
	// scoped is false for an unscoped token (no project): Keystone accepts it,
	// the other services answer 401.
	scoped bool
}

type server struct {
	seq         int64
	id, name    string
	status      string
	az          string
	taskState   string
	locked      bool      // Nova's lock (os-lock): a non-admin's createImage gets 409
	taskStart   time.Time // start of a snapshot task; zero for a manual task state
	taskSaving  time.Time // when the snapshot task's image starts saving
	taskUntil   time.Time // when the snapshot task ends; zero when not a snapshot task
	tags        []string
	metadata    map[string]string
	imageRef    string
	volumes     []string
	rootDevice  string
	imageProps  map[string]string
	created     time.Time
	failNext    bool
	stickNext   bool
	slowNext    time.Duration // added to the next image-backed snapshot's upload
	failVolNext bool
	// Boot state of a server made with POST /servers.
	flavorID   string
	buildUntil time.Time
	buildFault string
	fault      string
}

// image timeline kinds.
const (
	imgStatic = iota // status fixed (PutImage, volume-backed)
	imgBuild         // queued -> saving -> active
	imgStuck         // queued -> saving forever (or until vanishAt)
)

type image struct {
	seq         int64
	id, name    string
	kind        int
	status      string // for imgStatic
	start, end  time.Time
	saving      time.Time // queued until then (imgBuild, imgStuck)
	protected   bool
	visibility  string // "" shows as private
	size        int64
	props       map[string]string
	serverID    string
	snapshotIDs []string
	created     time.Time
	updated     time.Time
	volume      bool
	vanishAt    time.Time // a failed snapshot's image disappears then; zero = never
}

type snapshot struct {
	seq         int64
	id, name    string
	description string
	volumeID    string
	size        int
	status      string // fixed status (PutSnapshot); "" for the creating timeline
	readyAt     time.Time
	failed      bool
	deleteAt    time.Time // zero unless deleting
	dependents  int
	created     time.Time
	updated     time.Time
}

func newSim(opts Options) *Sim {
	if opts.ComputeVersion == "" {
		opts.ComputeVersion = DefaultComputeVersion
	}
	if opts.MaxLimit <= 0 {
		opts.MaxLimit = DefaultMaxLimit
	}
	if opts.TokenTTL <= 0 {
		opts.TokenTTL = DefaultTokenTTL
	}
	if opts.ImageBuildTime <= 0 {
		opts.ImageBuildTime = DefaultImageBuildTime
	}
	if opts.SnapshotBuildTime <= 0 {
		opts.SnapshotBuildTime = DefaultSnapshotBuildTime
	}
	if opts.SnapshotDeleteTime <= 0 {
		opts.SnapshotDeleteTime = DefaultSnapshotDeleteTime
	}
	if opts.Username == "" {
		opts.Username = DefaultUsername
	}
	if opts.Password == "" {
		opts.Password = DefaultPassword
	}
	if opts.ProjectName == "" {
		opts.ProjectName = DefaultProjectName
	}
	if opts.DomainName == "" {
		opts.DomainName = DefaultDomainName
	}
	if opts.Region == "" {
		opts.Region = DefaultRegion
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.BootTime <= 0 {
		opts.BootTime = DefaultBootTime
	}
	if opts.ImageQueueTime <= 0 {
		opts.ImageQueueTime = DefaultImageQueueTime
	}
	// Resource ids and tokens mix a per-start component into the seed, so that a
	// restarted simulator never hands out the ids of an earlier run (a real cloud
	// never reuses one); DeterministicIDs leaves the seed alone.
	idSeed := opts.Seed
	if !opts.DeterministicIDs {
		idSeed ^= perStart()
	}
	s := &Sim{
		opts:             opts,
		baseURL:          "http://127.0.0.1",
		idRand:           rand.New(rand.NewSource(idSeed)),
		tokenRand:        rand.New(rand.NewSource(idSeed + 1)),
		faultRand:        rand.New(rand.NewSource(opts.Seed + 2)),
		computeProjectID: opts.ComputeProjectID,
		servers:          map[string]*server{},
		images:           map[string]*image{},
		snapshots:        map[string]*snapshot{},
		tokens:           map[string]tokenInfo{},
		faults:           map[int]*Fault{},
		requests:         map[string]int{},
		createCalls:      map[string]int{},
		vols:             map[string]*volume{},
		closed:           make(chan struct{}),
	}
	// Project and user ids look like Keystone's: 32 hex digits, no dashes. They
	// come from the seed alone: a real Keystone keeps its project across restarts
	// of the other services.
	ident := rand.New(rand.NewSource(opts.Seed))
	if s.opts.ProjectID == "" {
		s.opts.ProjectID = strings.ReplaceAll(uuid4(ident), "-", "")
	}
	if s.opts.UserID == "" {
		s.opts.UserID = strings.ReplaceAll(uuid4(ident), "-", "")
	}
	if s.opts.AppCredentialID == "" {
		s.opts.AppCredentialID = strings.ReplaceAll(uuid4(ident), "-", "")
	}
	return s
}

// perStart returns a value that differs on every start of a simulator (crypto
// randomness, the clock as a fallback).
func perStart() int64 {
	var b [8]byte
	if _, err := crand.Read(b[:]); err != nil {
		return time.Now().UnixNano()
	}
	return int64(binary.LittleEndian.Uint64(b[:]))
}

// now returns the simulated time; callers hold s.mu.
func (s *Sim) now() time.Time { return s.opts.Now().Add(s.offset).UTC() }

// newID returns a random (seeded) version-4 UUID; callers hold s.mu or own s.
func (s *Sim) newID() string { return uuid4(s.idRand) }

// uuid4 draws a version-4 UUID from r.
func uuid4(r *rand.Rand) string {
	var b [16]byte
	r.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

func (s *Sim) nextSeq() int64 {
	s.seq++
	return s.seq
}

func (s *Sim) start(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("simcloud: listen on %s: %w", addr, err)
	}
	s.mu.Lock()
	s.ln = ln
	s.baseURL = "http://" + ln.Addr().String()
	s.srv = &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 10 * time.Second}
	srv := s.srv
	s.mu.Unlock()
	go func() { _ = srv.Serve(ln) }()
	return nil
}

func (s *Sim) close() error {
	s.closeMu.Do(func() { close(s.closed) })
	s.mu.Lock()
	srv := s.srv
	s.srv = nil
	s.mu.Unlock()
	if srv == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		_ = srv.Close()
		return fmt.Errorf("simcloud: shut down: %w", err)
	}
	return nil
}

func trimSlash(u string) string { return strings.TrimRight(u, "/") }

func (s *Sim) cloudsYAML(name string, appCred bool) []byte {
	s.mu.Lock()
	base := s.baseURL
	s.mu.Unlock()
	o := s.opts
	var b strings.Builder
	fmt.Fprintf(&b, "clouds:\n  %s:\n", name)
	if appCred {
		fmt.Fprintf(&b, "    auth_type: v3applicationcredential\n")
		fmt.Fprintf(&b, "    auth:\n      auth_url: %s/identity/v3\n", base)
		fmt.Fprintf(&b, "      application_credential_id: %q\n", o.AppCredentialID)
		fmt.Fprintf(&b, "      application_credential_secret: %q\n", o.AppCredentialSecret)
	} else {
		fmt.Fprintf(&b, "    auth_type: password\n")
		fmt.Fprintf(&b, "    auth:\n      auth_url: %s/identity/v3\n", base)
		fmt.Fprintf(&b, "      username: %q\n      password: %q\n", o.Username, o.Password)
		fmt.Fprintf(&b, "      project_name: %q\n", o.ProjectName)
		fmt.Fprintf(&b, "      project_domain_name: %q\n      user_domain_name: %q\n", o.DomainName, o.DomainName)
	}
	fmt.Fprintf(&b, "    region_name: %q\n    interface: public\n    identity_api_version: 3\n", o.Region)
	return []byte(b.String())
}

// vmStateOf maps a server status to Nova's vm_state.
func vmStateOf(status string) string {
	switch status {
	case "ACTIVE":
		return "active"
	case "SHUTOFF":
		return "stopped"
	case "ERROR":
		return "error"
	case "PAUSED":
		return "paused"
	case "SUSPENDED":
		return "suspended"
	case "BUILD":
		return "building"
	case "SHELVED_OFFLOADED":
		return "shelved_offloaded"
	case "SHELVED":
		return "shelved"
	case "RESCUE":
		return "rescued"
	case "VERIFY_RESIZE":
		return "resized"
	default:
		return strings.ToLower(status)
	}
}

func (s *Sim) addServer(spec ServerSpec) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	sv := &server{
		seq:        s.nextSeq(),
		id:         spec.ID,
		name:       spec.Name,
		status:     spec.Status,
		az:         spec.AZ,
		taskState:  spec.TaskState,
		locked:     spec.Locked,
		tags:       append([]string(nil), spec.Tags...),
		metadata:   copyMap(spec.Metadata),
		imageProps: copyMap(spec.ImageProperties),
		rootDevice: spec.RootDevice,
		created:    s.now(),
	}
	if sv.rootDevice == "" {
		sv.rootDevice = DefaultRootDevice
	}
	if sv.id == "" {
		sv.id = s.newID()
	}
	if sv.name == "" {
		sv.name = fmt.Sprintf("server-%d", len(s.servers)+1)
	}
	if sv.status == "" {
		sv.status = "ACTIVE"
	}
	if sv.az == "" {
		sv.az = "nova"
	}
	if spec.Volumes > 0 {
		for range spec.Volumes {
			sv.volumes = append(sv.volumes, s.newID())
		}
	} else {
		sv.imageRef = s.newID()
	}
	s.servers[sv.id] = sv
	return sv.id
}

func (s *Sim) removeServer(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.servers, id)
}

func (s *Sim) withServer(id string, f func(*server)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if sv := s.servers[id]; sv != nil {
		f(sv)
	}
}

// server returns a server with its snapshot task state brought up to date; callers
// hold s.mu.
func (s *Sim) server(id string) *server {
	sv := s.servers[id]
	if sv != nil {
		sv.refresh(s.now())
	}
	return sv
}

// refresh recomputes a build's or a snapshot task's state from the clock.
func (sv *server) refresh(now time.Time) {
	if !sv.buildUntil.IsZero() && !now.Before(sv.buildUntil) {
		sv.status, sv.taskState, sv.buildUntil = "ACTIVE", "", time.Time{}
		if sv.buildFault != "" {
			sv.status, sv.fault = "ERROR", sv.buildFault
		}
	}
	if sv.taskUntil.IsZero() {
		return
	}
	if !now.Before(sv.taskUntil) {
		sv.taskState = ""
		sv.taskUntil, sv.taskStart, sv.taskSaving = time.Time{}, time.Time{}, time.Time{}
		return
	}
	// Nova's snapshot task states in order over the build, matching the image:
	// pending then image_snapshot while the image is queued, uploading while saving.
	half := sv.taskStart.Add(sv.taskSaving.Sub(sv.taskStart) / 2)
	switch {
	case now.Before(half):
		sv.taskState = "image_snapshot_pending"
	case now.Before(sv.taskSaving):
		sv.taskState = "image_snapshot"
	default:
		sv.taskState = "image_uploading"
	}
}

func (sv *server) state(now time.Time) ServerState {
	sv.refresh(now)
	return ServerState{
		ID: sv.id, Name: sv.name, Status: sv.status, VMState: vmStateOf(sv.status),
		TaskState: sv.taskState, AZ: sv.az, Tags: append([]string{}, sv.tags...),
		Metadata: copyMap(sv.metadata), ImageRef: sv.imageRef,
		VolumeIDs: append([]string{}, sv.volumes...), RootDevice: sv.rootDevice,
		ImageProperties: copyMap(sv.imageProps), CreatedAt: sv.created,
	}
}

func (s *Sim) sortedServers() []*server {
	out := make([]*server, 0, len(s.servers))
	for _, sv := range s.servers {
		sv.refresh(s.now())
		out = append(out, sv)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].seq < out[j].seq })
	return out
}

func (s *Sim) listServers() []ServerState {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []ServerState
	for _, sv := range s.sortedServers() {
		out = append(out, sv.state(s.now()))
	}
	return out
}

// image returns an image as of now, or nil when it does not exist (a failed
// snapshot's image vanishes lazily here); callers hold s.mu.
func (s *Sim) image(id string) *image {
	im := s.images[id]
	if im == nil {
		return nil
	}
	if !im.vanishAt.IsZero() && !s.now().Before(im.vanishAt) {
		delete(s.images, id)
		return nil
	}
	return im
}

// statusAt is the image's Glance status at now.
func (im *image) statusAt(now time.Time) string {
	if im.kind == imgStatic {
		return im.status
	}
	switch {
	case now.Before(im.saving):
		return "queued"
	case im.kind == imgBuild && !now.Before(im.end):
		return "active"
	default:
		return "saving"
	}
}

func (im *image) state(now time.Time) ImageState {
	st := ImageState{
		ID: im.id, Name: im.name, Status: im.statusAt(now), Protected: im.protected,
		Properties: copyMap(im.props), ServerID: im.serverID,
		SnapshotIDs: append([]string(nil), im.snapshotIDs...), CreatedAt: im.created,
		UpdatedAt: im.updatedAt(now),
	}
	if st.Status == "active" {
		st.Size = im.size
	}
	return st
}

// updatedAt moves with the status transitions, as Glance's updated_at does.
func (im *image) updatedAt(now time.Time) time.Time {
	u := im.updated
	if im.kind != imgStatic {
		if !now.Before(im.saving) && im.saving.After(u) {
			u = im.saving
		}
		if im.kind == imgBuild && !now.Before(im.end) && im.end.After(u) {
			u = im.end
		}
	}
	return u
}

func (s *Sim) sortedImages() []*image {
	out := make([]*image, 0, len(s.images))
	for id := range s.images {
		if im := s.image(id); im != nil {
			out = append(out, im)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].seq < out[j].seq })
	return out
}

func (s *Sim) listImages() []ImageState {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []ImageState
	for _, im := range s.sortedImages() {
		out = append(out, im.state(s.now()))
	}
	return out
}

func (s *Sim) putImage(st ImageState) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	im := &image{
		seq: s.nextSeq(), id: st.ID, name: st.Name, kind: imgStatic, status: st.Status,
		protected: st.Protected, size: st.Size, props: copyMap(st.Properties),
		serverID: st.ServerID, snapshotIDs: append([]string(nil), st.SnapshotIDs...),
		created: st.CreatedAt, updated: st.UpdatedAt,
	}
	if im.id == "" {
		im.id = s.newID()
	}
	if im.status == "" {
		im.status = "active"
	}
	if im.created.IsZero() {
		im.created = now
	}
	if im.updated.IsZero() {
		im.updated = im.created
	}
	if im.props == nil {
		im.props = map[string]string{}
	}
	s.images[im.id] = im
	return im.id
}

// snapshot returns a snapshot as of now, or nil when it does not exist (a deleted
// snapshot vanishes lazily here, or goes back to available when a volume depends
// on it); callers hold s.mu.
func (s *Sim) snapshot(id string) *snapshot {
	sn := s.snapshots[id]
	if sn == nil {
		return nil
	}
	now := s.now()
	if !sn.deleteAt.IsZero() && !now.Before(sn.deleteAt) {
		if sn.dependents == 0 {
			delete(s.snapshots, id)
			return nil
		}
		// Cinder's manager resets a snapshot the backend calls busy to available.
		sn.status = "available"
		sn.updated = sn.deleteAt
		sn.deleteAt = time.Time{}
	}
	return sn
}

func (sn *snapshot) statusAt(now time.Time) string {
	switch {
	case !sn.deleteAt.IsZero():
		return "deleting"
	case sn.status != "":
		return sn.status
	case now.Before(sn.readyAt):
		return "creating"
	case sn.failed:
		return "error"
	default:
		return "available"
	}
}

func (sn *snapshot) updatedAt(now time.Time) time.Time {
	if sn.status == "" && sn.deleteAt.IsZero() && !now.Before(sn.readyAt) && sn.readyAt.After(sn.updated) {
		return sn.readyAt
	}
	return sn.updated
}

func (sn *snapshot) state(now time.Time) SnapshotState {
	return SnapshotState{
		ID: sn.id, Name: sn.name, Description: sn.description, VolumeID: sn.volumeID,
		Status: sn.statusAt(now), Size: sn.size, CreatedAt: sn.created,
		DependentVolumes: sn.dependents,
	}
}

func (s *Sim) sortedSnapshots() []*snapshot {
	out := make([]*snapshot, 0, len(s.snapshots))
	for id := range s.snapshots {
		if sn := s.snapshot(id); sn != nil {
			out = append(out, sn)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].seq < out[j].seq })
	return out
}

func (s *Sim) listSnapshots() []SnapshotState {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []SnapshotState
	for _, sn := range s.sortedSnapshots() {
		out = append(out, sn.state(s.now()))
	}
	return out
}

func (s *Sim) putSnapshot(st SnapshotState) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	sn := &snapshot{
		seq: s.nextSeq(), id: st.ID, name: st.Name, description: st.Description,
		volumeID: st.VolumeID, size: st.Size, status: st.Status, dependents: st.DependentVolumes,
		created: st.CreatedAt,
	}
	if sn.id == "" {
		sn.id = s.newID()
	}
	if sn.volumeID == "" {
		sn.volumeID = s.newID()
	}
	if sn.status == "" {
		sn.status = "available"
	}
	if sn.size == 0 {
		sn.size = 1
	}
	if sn.created.IsZero() {
		sn.created = now
	}
	sn.updated = sn.created
	s.snapshots[sn.id] = sn
	return sn.id
}

func (s *Sim) setFault(f Fault) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faultSeq++
	fc := f
	s.faults[s.faultSeq] = &fc
	return s.faultSeq
}

func copyMap(m map[string]string) map[string]string {
	if m == nil {
		return nil
	}
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}
