// Package cloudtest holds what tests of cloud.Cloud and of its users need: a
// contract suite (Run) that every implementation must pass, a function-field Mock,
// and Fake, a stateful in-memory cloud with Nova's, Glance's and Cinder's rules.
//
// It imports only the cloud package and the standard library, so that a simulator
// can be checked by it without the two sharing code: an implementation's test
// adapts its own controls to the Controller interface.
package cloudtest

import (
	"time"

	"github.com/imagekeeper/imagekeeper/cloud"
)

// Op names one cloud.Cloud method, for faults and request counters.
type Op string

// The operations of cloud.Cloud.
const (
	OpListServers    Op = "list_servers"
	OpGetServer      Op = "get_server"
	OpCreateImage    Op = "create_image"
	OpGetImage       Op = "get_image"
	OpListImages     Op = "list_images"
	OpDeleteImage    Op = "delete_image"
	OpGetSnapshot    Op = "get_snapshot"
	OpListSnapshots  Op = "list_snapshots"
	OpDeleteSnapshot Op = "delete_snapshot"
	OpCreateServer   Op = "create_server"
	OpDeleteServer   Op = "delete_server"
	OpConsoleOutput  Op = "console_output"
	OpGetVolume      Op = "get_volume"
	OpDeleteVolume   Op = "delete_volume"
)

// ServerSpec describes a server for Controller.AddServer. Zero fields get the
// cloud's defaults (a generated name, ACTIVE, availability zone "nova").
type ServerSpec struct {
	Name      string
	Status    string // ACTIVE, SHUTOFF, ERROR, ...
	TaskState string // "" for none
	AZ        string
	Tags      []string
	// Volumes is 0 for an image-backed server, N > 0 for a server booted from a
	// volume with N volumes attached (each gets a snapshot per image).
	Volumes int
}

// Fault is a misbehaviour of the cloud for the next Count requests of Op.
type Fault struct {
	Op Op
	// Status is the HTTP status answered instead (500, 503, 429, ...).
	Status int
	// RetryAfter goes with Status 429 (or 503): the Retry-After the cloud sends.
	RetryAfter time.Duration
	// EmptyImageID (OpCreateImage only) makes the cloud accept the request and make
	// the image, but answer without its id.
	EmptyImageID bool
	// Count is how many requests the fault hits; 0 means one.
	Count int
}

// Controller arranges the state of the cloud behind an Env, the way an operator or
// a broken network would. Implementations adapt their own controls to it.
type Controller interface {
	// AddServer adds a server and returns its id.
	AddServer(spec ServerSpec) string
	// SetServerStatus sets a server's status (ACTIVE, ERROR, ...).
	SetServerStatus(id, status string)
	// SetServerTaskState sets a server's task state ("" for none).
	SetServerTaskState(id, taskState string)
	// Advance moves the cloud's clock, completing transitions (images becoming
	// active, snapshots becoming available or gone) without sleeping.
	Advance(d time.Duration)
	// FailNextSnapshot makes the server's next image fail: the image vanishes.
	FailNextSnapshot(serverID string)
	// SetImageProtected sets an image's protected flag.
	SetImageProtected(imageID string, protected bool)
	// AddVolumeFromSnapshot makes a volume depend on the snapshot.
	AddVolumeFromSnapshot(snapshotID string)
	// ExpireTokens invalidates every credential token issued so far.
	ExpireTokens()
	// InjectFault installs a fault; false when this cloud cannot simulate it (the
	// test that needs it is skipped).
	InjectFault(f Fault) bool
	// Requests counts the requests that reached the cloud for op (every page and
	// every retry), since the Env was made.
	Requests(op Op) int
	// CreateImageCalls counts createImage requests for the server that reached the
	// cloud, refused and faulted ones included.
	CreateImageCalls(serverID string) int
	// FailNextBoot makes the next server booted with CreateServer end in ERROR
	// with Nova's fault message reason.
	FailNextBoot(reason string)
	// SetInstanceQuota limits the project to n servers (0: no limit); a boot
	// beyond it is refused with Nova's 403 quota answer.
	SetInstanceQuota(n int)
	// VolumesFromSnapshots lists the volumes that exist and were made from a
	// snapshot (a restore's), deleting ones included.
	VolumesFromSnapshots() []cloud.Volume
}

// EnvOptions are what a test asks of newEnv.
type EnvOptions struct {
	// PageSize, when > 0, makes every listing come back in pages of this size (set
	// it on the client and, where possible, on the cloud).
	PageSize int
}

// Env is one cloud under test, fresh for each test.
type Env struct {
	// Cloud is the implementation under test.
	Cloud cloud.Cloud
	// Ctl arranges the state behind Cloud.
	Ctl Controller
	// Retries says that Cloud retries 5xx and 429 answers to idempotent calls by
	// itself; when false, the suite expects cloud.ErrUnavailable instead.
	Retries bool
	// Paged says that listings really come back in EnvOptions.PageSize pages, so
	// the suite can count list requests.
	Paged bool
	// Settle is an Advance long enough for every image and snapshot to finish
	// (and every deletion to complete); zero means one hour.
	Settle time.Duration
}
