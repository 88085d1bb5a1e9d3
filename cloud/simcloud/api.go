// Package simcloud is a stateful simulated OpenStack (Keystone v3, Nova, Glance v2,
// Cinder v3) that speaks the same HTTP as the real services, so that gophercloud, our
// adapter and python-openstackclient can all be pointed at it.
//
// It uses the standard library only: it is an independent second opinion on how
// OpenStack behaves, and must never share code with the adapter it checks.
//
// The simulator serves every service on one listener, laid out like devstack:
//
//	/identity/v3            Keystone (auth_url)
//	/compute/v2.1           Nova (also /compute/v2.1/{project})
//	/image/v2               Glance
//	/volume/v3/{project}    Cinder
//	/_sim/                  control and inspection (not OpenStack)
//
// Time is read through Options.Now plus an offset that Advance moves, and every
// state transition (image queued -> saving -> active, snapshot creating ->
// available, deleting -> gone, token expiry) is computed lazily when state is
// read, so there are no background goroutines and tests need no sleeps.
//
// Operation names, used by Fault.Op and Requests:
//
//	keystone.versions        GET /identity/, GET /identity/v3
//	keystone.token           POST /identity/v3/auth/tokens
//	compute.versions         GET /compute/, /compute/v2.1/, /compute/v2.1/{project}/
//	compute.servers.list     GET /servers, /servers/detail
//	compute.servers.get      GET /servers/{id}
//	compute.servers.tags     GET /servers/{id}/tags
//	compute.createImage      POST /servers/{id}/action {"createImage": ...} (any action but the console)
//	compute.servers.create   POST /servers
//	compute.servers.delete   DELETE /servers/{id}
//	compute.servers.console  POST /servers/{id}/action {"os-getConsoleOutput": ...}
//	compute.flavors          GET /flavors, /flavors/detail, /flavors/{id}
//	compute.other            any other compute request (answered 404 or minimal)
//	image.versions           GET /image/, /image/versions
//	image.schema             GET /image/v2/schemas/...
//	image.list               GET /image/v2/images
//	image.get                GET /image/v2/images/{id}
//	image.delete             DELETE /image/v2/images/{id}
//	image.update             PATCH /image/v2/images/{id}
//	volume.versions          GET /volume/, /volume/v3/
//	volume.snapshots.list    GET /snapshots, /snapshots/detail
//	volume.snapshots.get     GET /snapshots/{id}
//	volume.snapshots.delete  DELETE /snapshots/{id}
//	volume.volumes           GET /volumes, /volumes/detail, /volumes/{id}
//	volume.volumes.delete    DELETE /volumes/{id}
//	volume.other             any other block-storage request
//	"*"                      (Fault.Op only) every operation above
//
// # Answers of the real cloud this simulator copies
//
// Captured with curl and python-openstackclient against a packaged OpenStack Zed
// (Nova 26, Glance 25, Cinder 21, Keystone 22); each has a test in this package:
//
//   - Catalog: the compute endpoint is .../v2.1 without the project id (Zed's
//     default); Huawei documents .../v2.1/{project_id}. Options.ComputeProjectID
//     and PATCH /_sim/settings {"compute_project_id": true} give the second form;
//     both are served either way and links repeat the form of the request. The
//     volume endpoints (block-storage, volumev3) carry the project id.
//   - Keystone: a password request without a scope, for a user without a default
//     project, gets 201 and an unscoped token: no project, roles or catalog (so
//     gophercloud finds no endpoint at all), and Nova, Glance and Cinder answer
//     401 to it (Keystone's "Unscoped tokens": "An unscoped token contains
//     neither a service catalog, any roles, a project scope, nor a domain
//     scope", https://docs.openstack.org/keystone/train/admin/tokens-overview.html). A region_name the catalog does not have is not refused by
//     Keystone: the client finds no endpoint (gophercloud: "No suitable endpoint
//     could be found in the service catalog.").
//   - GET /v2.1/ answers 200 with "version": "2.93", "min_version": "2.1" and the
//     headers OpenStack-API-Version: compute 2.1 and X-OpenStack-Nova-API-Version:
//     2.1 (the requested version when one is asked for). The root version list
//     has no such headers.
//   - Ids are never reused; project ids stay across restarts.
//   - Next links re-encode the query as Python's urlencode does: a comma is %2C
//     and "=" %3D (tags-any=fid%2Cbackup%3Ddaily), marker last. Glance: {"next":
//     "/v2/images?limit=1&marker=<id>", "first": "/v2/images?limit=1"}.
//   - The admin server view has OS-EXT-SRV-ATTR:host, :hypervisor_hostname,
//     :instance_name, from 2.3 :hostname, :kernel_id, :launch_index, :ramdisk_id,
//     :reservation_id, :root_device_name, :user_data, and from 2.16 host_status.
//     A server without networks has no security_groups key.
//   - An image-backed snapshot is queued, saving from about 0.7 s, then active;
//     its keys are Glance's plus base_image_ref, boot_roles, image_location
//     ("snapshot"), image_state ("available"), image_type, instance_uuid,
//     owner_id, owner_project_name, owner_user_name, owner_specified.openstack.
//     {md5,object,sha256} (inherited from the base image), user_id, and stores
//     once it has data.
//   - A volume-backed snapshot image is active at once, size 0, and its
//     root_device_name and block_device_mapping device names follow the server's
//     root device (/dev/sda on a scsi deployment, /dev/vda with virtio).
//   - Glance's errors are webob's: an HTML page for Accept */* or none (403
//     "Image <id> is protected and cannot be deleted.", 404 "No image found with
//     ID <id>"), JSON for Accept: application/json (what gophercloud sends). An
//     image DELETE answers 204 and a Cinder snapshot DELETE 202 (Openstack-Api-
//     Version: volume 3.0), both empty with Content-Type text/html;
//     charset=UTF-8; an unknown snapshot is a JSON 404 itemNotFound.
//
// Deliberate simplifications (what a real cloud does that this one does not):
// the simulated user has no default project, so an unscoped request never gets
// a project-scoped token; version documents never need a token; one flavor,
// no networks, no base images in Glance (server image ids resolve to nothing);
// server names and ids are the only Nova filters besides tags, status and (from
// 2.83) availability_zone; Glance images carry no tags and ignore size/date
// filters; createImage's name limit is Nova's (255 characters), not Huawei's
// (< 243 bytes); Keystone's error bodies are close to, not byte-for-byte, the
// real ones; the block_device_mapping key order is fixed (Nova's varies); an
// image-backed snapshot's upload takes ImageBuildTime (2 s by default; about 6.7 s on the
// captured cloud); no quotas (no 403 OverQuota, no 413); no quiesce;
// volume-backed snapshots need no policy.
package simcloud

import (
	"log/slog"
	"net/http"
	"time"
)

// Default values of Options fields left zero.
const (
	DefaultComputeVersion     = "2.93"
	DefaultMaxLimit           = 1000
	DefaultTokenTTL           = time.Hour
	DefaultImageBuildTime     = 2 * time.Second
	DefaultImageQueueTime     = 700 * time.Millisecond
	DefaultRootDevice         = "/dev/vda"
	DefaultSnapshotBuildTime  = time.Second
	DefaultSnapshotDeleteTime = 500 * time.Millisecond
	DefaultBootTime           = time.Second
	DefaultUsername           = "admin"
	DefaultPassword           = "secret"
	DefaultProjectName        = "demo"
	DefaultDomainName         = "Default"
	DefaultRegion             = "RegionOne"
)

// Options configures a Sim. Zero fields take the defaults above; ProjectID, UserID
// and AppCredentialID are derived from Seed when empty.
type Options struct {
	// Seed seeds every generated id (servers, images, snapshots, volumes, tokens).
	// Unless DeterministicIDs is set, a per-start component is mixed in, so that
	// ids differ between two starts with the same seed. Project, user and
	// application credential ids come from the seed alone.
	Seed int64
	// DeterministicIDs makes the ids depend on Seed alone: the same after every
	// start, for tests that compare ids between runs.
	DeterministicIDs bool
	// ComputeVersion is the maximum compute microversion ("version" in the version
	// document); the minimum is always 2.1.
	ComputeVersion string
	// ComputeProjectID puts the project id in the catalog's compute endpoint
	// (.../compute/v2.1/{project_id}), the form Huawei documents; by default the
	// endpoint is Zed's .../compute/v2.1. Both forms are served either way.
	ComputeProjectID bool
	// MaxLimit is Nova's osapi_max_limit: the page size when no limit is given and
	// the cap on a larger one. Glance and Cinder listings use it too.
	MaxLimit int
	// TokenTTL is how long an issued token stays valid.
	TokenTTL time.Duration
	// ImageBuildTime is how long an image-backed server's image takes from queued to
	// active.
	ImageBuildTime time.Duration
	// ImageQueueTime is how long such an image stays queued before saving (Zed:
	// about 0.7 s), capped at a third of ImageBuildTime so that a short test build
	// (and a failing one, which vanishes halfway) still passes through saving;
	// with the default build time the image saves from 0.67 s.
	ImageQueueTime time.Duration
	// SnapshotBuildTime is how long a Cinder snapshot stays creating.
	SnapshotBuildTime time.Duration
	// SnapshotDeleteTime is how long a deleted Cinder snapshot stays deleting before
	// it is gone (404), or back to available when a volume depends on it.
	SnapshotDeleteTime time.Duration
	// BootTime is how long a server made with POST /servers stays BUILD before it
	// is ACTIVE (or ERROR); DefaultBootTime when zero.
	BootTime time.Duration
	// InstanceQuota limits the number of servers (0: unlimited); POST /servers
	// beyond it gets Nova's 403 quota answer. SetInstanceQuota changes it.
	InstanceQuota int
	// Credentials accepted by Keystone (password method, scoped to the project).
	Username, Password, UserID string
	ProjectID, ProjectName     string
	DomainName                 string
	// AppCredentialID and AppCredentialSecret are accepted by the
	// application_credential method; empty secret disables that method.
	AppCredentialID, AppCredentialSecret string
	// Region is the catalog region.
	Region string
	// Now is the clock; time.Now when nil. Advance adds to it.
	Now func() time.Time
	// Logger receives one debug line per request (and unknown paths at info);
	// nil discards.
	Logger *slog.Logger
}

func (o Options) logf(msg string, args ...any) {
	if o.Logger != nil {
		o.Logger.Debug(msg, args...)
	}
}

// info logs what a developer must see: a request the simulator cannot answer.
func (o Options) info(msg string, args ...any) {
	if o.Logger != nil {
		o.Logger.Info(msg, args...)
	}
}

// ServerSpec describes a server to add. Empty fields get defaults: a generated
// ID, Name "server-N", Status ACTIVE, AZ "nova".
type ServerSpec struct {
	ID        string `json:"id,omitempty"`
	Name      string `json:"name,omitempty"`
	Status    string `json:"status,omitempty"`     // ACTIVE, SHUTOFF, ERROR, PAUSED, SUSPENDED, BUILD, SHELVED_OFFLOADED
	AZ        string `json:"az,omitempty"`         // OS-EXT-AZ:availability_zone
	TaskState string `json:"task_state,omitempty"` // OS-EXT-STS:task_state, "" for none
	// Locked is Nova's lock (os-lock): the server shows locked: true and refuses a
	// non-admin's createImage with 409.
	Locked   bool              `json:"locked,omitempty"`
	Tags     []string          `json:"tags,omitempty"`
	Metadata map[string]string `json:"metadata,omitempty"`
	// Volumes is 0 for an image-backed server, N > 0 for a volume-backed server with
	// N attached volumes (the first is the root disk).
	Volumes int `json:"volumes,omitempty"`
	// RootDevice is the server's root device name (OS-EXT-SRV-ATTR:root_device_name),
	// "/dev/vda" by default; it depends on the disk bus ("/dev/sda" for scsi). A
	// volume-backed image's root_device_name and block_device_mapping follow it.
	RootDevice string `json:"root_device,omitempty"`
	// ImageProperties are the properties of the image the server was booted from;
	// an image-backed snapshot inherits them (Nova's image_* system metadata), which
	// is how a server booted from one of our images passes our stamp on.
	ImageProperties map[string]string `json:"image_properties,omitempty"`
}

// ServerState is a server as the simulator holds it.
type ServerState struct {
	ID              string            `json:"id"`
	Name            string            `json:"name"`
	Status          string            `json:"status"`
	VMState         string            `json:"vm_state"`
	TaskState       string            `json:"task_state"`
	AZ              string            `json:"az"`
	Tags            []string          `json:"tags"`
	Metadata        map[string]string `json:"metadata"`
	ImageRef        string            `json:"image_ref"` // "" for volume-backed
	VolumeIDs       []string          `json:"volume_ids"`
	RootDevice      string            `json:"root_device"`
	ImageProperties map[string]string `json:"image_properties,omitempty"`
	CreatedAt       time.Time         `json:"created_at"`
}

// ImageState is a Glance image as the simulator holds it. For PutImage, empty ID,
// Status ("active"), Name and CreatedAt get defaults.
type ImageState struct {
	ID         string            `json:"id"`
	Name       string            `json:"name"`
	Status     string            `json:"status"`
	Protected  bool              `json:"protected"`
	Size       int64             `json:"size"`
	Properties map[string]string `json:"properties"`
	// ServerID is the server createImage was called on ("" for PutImage images).
	ServerID string `json:"server_id,omitempty"`
	// SnapshotIDs are the Cinder snapshots named by block_device_mapping.
	SnapshotIDs []string  `json:"snapshot_ids,omitempty"`
	CreatedAt   time.Time `json:"created_at"`
	UpdatedAt   time.Time `json:"updated_at"`
}

// SnapshotState is a Cinder volume snapshot as the simulator holds it.
type SnapshotState struct {
	ID          string    `json:"id"`
	Name        string    `json:"name"`
	Description string    `json:"description"`
	VolumeID    string    `json:"volume_id"`
	Status      string    `json:"status"`
	Size        int       `json:"size"`
	CreatedAt   time.Time `json:"created_at"`
	// DependentVolumes counts volumes created from the snapshot; Cinder refuses to
	// delete it while this is > 0 (the snapshot goes back to available).
	DependentVolumes int `json:"dependent_volumes"`
}

// Fault injects misbehaviour into requests whose operation matches Op.
type Fault struct {
	// Op is an operation name from the package documentation, or "*" for all.
	Op string `json:"op"`
	// Latency is added before the request is handled (or the error is returned).
	Latency time.Duration `json:"latency,omitempty"`
	// ErrorRate is the probability (0..1] of answering ErrorStatus instead; 0 with
	// ErrorStatus set means always.
	ErrorRate float64 `json:"error_rate,omitempty"`
	// ErrorStatus is the status of injected errors (500, 503, ...).
	ErrorStatus int `json:"error_status,omitempty"`
	// Status429RetryAfter, when > 0, answers 429 with a Retry-After header of this
	// many seconds (rounded up).
	Status429RetryAfter time.Duration `json:"status_429_retry_after,omitempty"`
	// Hang blocks the request until the client gives up or the Sim closes.
	Hang bool `json:"hang,omitempty"`
	// Count limits the fault to the next Count matching requests; 0 means until
	// cleared.
	Count int `json:"count,omitempty"`
	// After makes the error, 429 or hang strike after the request was processed:
	// the state changed (an image was made) but the client sees a failure, which
	// is how a createImage ends with an unknown outcome.
	After bool `json:"after,omitempty"`
}

// New returns a simulator with no servers. Call Start to serve it, or mount
// Handler in an httptest.Server and call SetBaseURL.
func New(opts Options) *Sim {
	return newSim(opts)
}

// Start listens on addr (e.g. "127.0.0.1:0") and serves the simulator until Close.
func (s *Sim) Start(addr string) error { return s.start(addr) }

// URL returns the base URL the catalog advertises, e.g. "http://127.0.0.1:41234".
func (s *Sim) URL() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.baseURL
}

// SetBaseURL sets the URL the catalog and links advertise when the Sim is served by
// someone else (Handler in an httptest.Server). Start sets it itself.
func (s *Sim) SetBaseURL(u string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.baseURL = trimSlash(u)
}

// Handler returns the simulator's HTTP handler (all services and /_sim/).
func (s *Sim) Handler() http.Handler { return http.HandlerFunc(s.serveHTTP) }

// Close stops the listener started by Start and releases hanging requests.
func (s *Sim) Close() error { return s.close() }

// CloudsYAML returns a clouds.yaml document with one password-auth entry named
// cloudName pointing at this simulator (auth_url <URL>/identity/v3, region,
// interface public, identity_api_version 3).
func (s *Sim) CloudsYAML(cloudName string) []byte { return s.cloudsYAML(cloudName, false) }

// CloudsYAMLAppCredential is CloudsYAML with the application_credential auth type.
func (s *Sim) CloudsYAMLAppCredential(cloudName string) []byte {
	return s.cloudsYAML(cloudName, true)
}

// Options returns the effective options (defaults filled in).
func (s *Sim) Options() Options { return s.opts }

// Advance moves the simulator's clock forward by d, so that transitions complete
// and tokens expire without sleeping.
func (s *Sim) Advance(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.offset += d
}

// Now returns the simulator's current time (Options.Now plus Advance offsets).
func (s *Sim) Now() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.now()
}

// AddServer adds a server and returns its id.
func (s *Sim) AddServer(spec ServerSpec) string { return s.addServer(spec) }

// RemoveServer deletes a server (its images and snapshots stay, as in Nova).
func (s *Sim) RemoveServer(id string) { s.removeServer(id) }

// SetServerStatus sets a server's status (ACTIVE, SHUTOFF, ERROR, ...); vm_state
// follows it.
func (s *Sim) SetServerStatus(id, status string) {
	s.withServer(id, func(sv *server) { sv.status = status })
}

// SetServerTaskState sets a server's task state ("" for none).
func (s *Sim) SetServerTaskState(id, taskState string) {
	s.withServer(id, func(sv *server) { sv.taskState = taskState; sv.taskUntil = time.Time{} })
}

// SetServerLocked locks or unlocks a server (Nova's os-lock / os-unlock).
func (s *Sim) SetServerLocked(id string, locked bool) {
	s.withServer(id, func(sv *server) { sv.locked = locked })
}

// SetServerTags replaces a server's tags.
func (s *Sim) SetServerTags(id string, tags []string) {
	s.withServer(id, func(sv *server) { sv.tags = append([]string(nil), tags...) })
}

// SetComputeProjectID chooses the compute endpoint that tokens issued from now on
// carry in their catalog: with the project id (.../v2.1/{project_id}, Huawei's
// documented form) or without (Zed's default). Both forms are served either way.
func (s *Sim) SetComputeProjectID(on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.computeProjectID = on
}

// ComputeProjectID reports whether the catalog's compute endpoint carries the
// project id.
func (s *Sim) ComputeProjectID() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.computeProjectID
}

// SetFault installs a fault and returns its id for ClearFault.
func (s *Sim) SetFault(f Fault) int { return s.setFault(f) }

// ClearFault removes one fault.
func (s *Sim) ClearFault(id int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.faults, id)
}

// ClearFaults removes every fault.
func (s *Sim) ClearFaults() {
	s.mu.Lock()
	defer s.mu.Unlock()
	clear(s.faults)
}

// FailNextSnapshot makes the next createImage of the server fail asynchronously:
// the image is created (queued, then saving) and vanishes (404) halfway through
// ImageBuildTime, as Nova's delete_image_on_error does, and the server's task state
// clears then. For a volume-backed server the image (active at once) vanishes
// halfway through SnapshotBuildTime and its Cinder snapshots end in error.
func (s *Sim) FailNextSnapshot(serverID string) {
	s.withServer(serverID, func(sv *server) { sv.failNext = true })
}

// StickNextImage makes the next createImage of an image-backed server leave its
// image in saving forever, like a nova-compute that died mid-upload; the server's
// task state still clears after ImageBuildTime, as nova-compute's restart does.
func (s *Sim) StickNextImage(serverID string) {
	s.withServer(serverID, func(sv *server) { sv.stickNext = true })
}

// SlowNextImage makes the next createImage of an image-backed server take d longer
// than ImageBuildTime (a big disk): the image stays saving, then becomes active.
func (s *Sim) SlowNextImage(serverID string, d time.Duration) {
	s.withServer(serverID, func(sv *server) { sv.slowNext = d })
}

// FailNextVolumeSnapshot makes the Cinder snapshots of the server's next
// volume-backed createImage go to error instead of available.
func (s *Sim) FailNextVolumeSnapshot(serverID string) {
	s.withServer(serverID, func(sv *server) { sv.failVolNext = true })
}

// ExpireTokens invalidates every token issued so far: the next request with one of
// them gets 401, and re-authentication works.
func (s *Sim) ExpireTokens() {
	s.mu.Lock()
	defer s.mu.Unlock()
	clear(s.tokens)
}

// SetImageProtected sets an image's protected flag; false if there is no such image.
func (s *Sim) SetImageProtected(id string, protected bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	im := s.image(id)
	if im == nil {
		return false
	}
	im.protected = protected
	return true
}

// AddVolumeFromSnapshot records a volume created from the snapshot, which makes
// Cinder refuse to delete it; false if there is no such snapshot.
func (s *Sim) AddVolumeFromSnapshot(snapshotID string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	sn := s.snapshot(snapshotID)
	if sn == nil {
		return false
	}
	sn.dependents++
	return true
}

// PutImage stores an image directly (no server involved) and returns its id, to
// arrange state for reconcile and ownership tests.
func (s *Sim) PutImage(im ImageState) string { return s.putImage(im) }

// PutSnapshot stores a Cinder snapshot directly and returns its id.
func (s *Sim) PutSnapshot(sn SnapshotState) string { return s.putSnapshot(sn) }

// DeleteImageDirect removes an image behind the client's back (no protection
// check); false if there was none.
func (s *Sim) DeleteImageDirect(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.image(id) == nil {
		return false
	}
	delete(s.images, id)
	return true
}

// DeleteSnapshotDirect removes a snapshot at once; false if there was none.
func (s *Sim) DeleteSnapshotDirect(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.snapshot(id) == nil {
		return false
	}
	delete(s.snapshots, id)
	return true
}

// Image returns one image as of now; ok is false when it does not exist.
func (s *Sim) Image(id string) (ImageState, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	im := s.image(id)
	if im == nil {
		return ImageState{}, false
	}
	return im.state(s.now()), true
}

// Images returns every image as of now, oldest first.
func (s *Sim) Images() []ImageState { return s.listImages() }

// Snapshot returns one snapshot as of now; ok is false when it does not exist.
func (s *Sim) Snapshot(id string) (SnapshotState, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sn := s.snapshot(id)
	if sn == nil {
		return SnapshotState{}, false
	}
	return sn.state(s.now()), true
}

// Snapshots returns every Cinder snapshot as of now, oldest first.
func (s *Sim) Snapshots() []SnapshotState { return s.listSnapshots() }

// Server returns one server as of now; ok is false when it does not exist.
func (s *Sim) Server(id string) (ServerState, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sv := s.server(id)
	if sv == nil {
		return ServerState{}, false
	}
	return sv.state(s.now()), true
}

// Servers returns every server, in creation order.
func (s *Sim) Servers() []ServerState { return s.listServers() }

// Requests returns how many requests each operation received (faulted ones
// included), keyed by operation name.
func (s *Sim) Requests() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]int, len(s.requests))
	for k, v := range s.requests {
		out[k] = v
	}
	return out
}

// ResetRequests zeroes the request counters.
func (s *Sim) ResetRequests() {
	s.mu.Lock()
	defer s.mu.Unlock()
	clear(s.requests)
	clear(s.createCalls)
}

// CreateImageCalls returns how many createImage requests reached the server
// (including refused and faulted ones).
func (s *Sim) CreateImageCalls(serverID string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.createCalls[serverID]
}
