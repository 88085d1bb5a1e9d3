// Package cloud is the boundary between imagekeeper and an OpenStack-like cloud.
//
// The interface is deliberately narrow: it holds exactly the calls a backup run, a
// prune and a reconcile need, with value types that carry no SDK types. Every
// implementation maps the cloud's answers to the sentinel errors below in exactly one
// place, so callers decide with errors.Is and never look at HTTP status codes.
//
// Error contract (for every method unless its doc says otherwise):
//   - ErrNotFound: the object does not exist (HTTP 404). For a delete this means
//     "already gone" and callers treat it as success.
//   - ErrBusy: the object exists but is in a state that refuses the operation now
//     (HTTP 409: a server with a task in progress, a server in ERROR). The *Error
//     carries Nova's message as Reason.
//   - ErrProtected: the image is protected and cannot be deleted (Glance 403).
//   - ErrInUse: a volume snapshot that a volume depends on, or in a state that
//     refuses deletion (Cinder 400 InvalidSnapshot).
//   - ErrQuota: a quota or absolute limit was hit (HTTP 403 OverQuota, 413).
//   - ErrInvalid: the request itself was refused (HTTP 400); retrying cannot help.
//   - ErrUnknownOutcome: only from CreateImage: the request may or may not have made
//     an image (timeout, connection reset, 5xx after the request was sent). The caller
//     must look for its stamped image before it ever calls CreateImage again.
//   - ErrUnavailable: the cloud could not be reached or kept answering 429/5xx after
//     the implementation's own retries; the operation is worth trying again later.
//
// Retryable reports whether an error is worth a later attempt.
package cloud

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Sentinel errors of the contract described in the package documentation.
var (
	ErrNotFound       = errors.New("not found")
	ErrBusy           = errors.New("busy")
	ErrProtected      = errors.New("protected")
	ErrInUse          = errors.New("in use")
	ErrQuota          = errors.New("over quota")
	ErrInvalid        = errors.New("invalid request")
	ErrUnknownOutcome = errors.New("outcome unknown")
	ErrUnavailable    = errors.New("cloud unavailable")
)

// Error is the concrete error every implementation returns for a refused call. It
// matches its Kind with errors.Is and keeps the cloud's own words for the logs and
// the lineage.
type Error struct {
	// Op names the operation, e.g. "create image" or "delete snapshot".
	Op string
	// ID is the object the operation was about (server, image or snapshot id).
	ID string
	// Status is the HTTP status code, 0 when no response arrived.
	Status int
	// Kind is one of the sentinel errors above.
	Kind error
	// Reason is the cloud's message, e.g. "Cannot 'createImage' instance ... while it
	// is in task_state image_snapshot_pending".
	Reason string
	// Err is the underlying error, if any.
	Err error
}

// Error implements error.
func (e *Error) Error() string {
	msg := e.Op
	if e.ID != "" {
		msg += " " + e.ID
	}
	msg += ": " + e.Kind.Error()
	if e.Status != 0 {
		msg += fmt.Sprintf(" (HTTP %d)", e.Status)
	}
	if e.Reason != "" {
		msg += ": " + e.Reason
	}
	if e.Err != nil {
		msg += ": " + e.Err.Error()
	}
	return msg
}

// Unwrap exposes both the kind and the cause to errors.Is and errors.As.
func (e *Error) Unwrap() []error {
	if e.Err == nil {
		return []error{e.Kind}
	}
	return []error{e.Kind, e.Err}
}

// Reason returns the cloud's message carried by err, or err's text when it carries none.
func Reason(err error) string {
	var ce *Error
	if errors.As(err, &ce) && ce.Reason != "" {
		return ce.Reason
	}
	if err == nil {
		return ""
	}
	return err.Error()
}

// Retryable reports whether a later attempt of the same operation may succeed:
// busy objects, an unreachable or throttling cloud. It is false for ErrUnknownOutcome
// on purpose: that one needs a look-up first, not a retry.
func Retryable(err error) bool {
	return errors.Is(err, ErrBusy) || errors.Is(err, ErrUnavailable) || errors.Is(err, ErrInUse)
}

// Server is what imagekeeper needs to know of a Nova server.
type Server struct {
	ID     string
	Name   string
	Status string // Nova status: ACTIVE, SHUTOFF, ERROR, ...
	// TaskState is Nova's OS-EXT-STS:task_state; empty when no task is in progress.
	TaskState string
	// Locked is Nova's locked field (microversion 2.9): a locked server refuses a
	// non-admin's createImage with 409.
	Locked           bool
	AvailabilityZone string
	Tags             []string
	Metadata         map[string]string
	// VolumeBacked is true when the server boots from a volume (Nova reports no image).
	VolumeBacked bool
	// ImageID is the image the server was booted from; "" when Nova reports none. A
	// server restored from a volume-backed image names that image here although its
	// root disk is a volume.
	ImageID string
	// Flavor is the flavor as Nova shows it: its id below microversion 2.47, its
	// name (original_name) from 2.47 on. BootRequest.Flavor accepts either.
	Flavor string
	// VolumeIDs are the attached volumes (os-extended-volumes:volumes_attached).
	VolumeIDs []string
	// Fault is Nova's fault message of a server in ERROR ("" otherwise).
	Fault string
}

// Server statuses of Nova that a restore distinguishes.
const (
	ServerBuild  = "BUILD"
	ServerActive = "ACTIVE"
	ServerError  = "ERROR"
)

// NetworkNone and NetworkAuto are BootRequest.Network values with Nova's meaning
// (microversion >= 2.37): no network at all, or one Nova picks or makes.
const (
	NetworkNone = "none"
	NetworkAuto = "auto"
)

// BootRequest asks Nova for a new server from an image (POST /servers with
// imageRef). Both image kinds boot with the same request: for a volume-backed
// image Nova reads the image's block_device_mapping itself and makes the new root
// (and data) volumes from the Cinder snapshots it names.
type BootRequest struct {
	Name    string
	ImageID string
	// Flavor is a flavor id or name.
	Flavor string
	// Network is a network UUID, NetworkNone or NetworkAuto ("" means auto).
	Network          string
	AvailabilityZone string
	// Metadata becomes the server's metadata (our drill stamp lives here).
	Metadata map[string]string
}

// Volume statuses of Cinder that a restore distinguishes.
const (
	VolumeAvailable = "available"
	VolumeInUse     = "in-use"
	VolumeDeleting  = "deleting"
)

// Volume is a Cinder volume.
type Volume struct {
	ID     string
	Name   string
	Status string
	// SnapshotID is the snapshot the volume was made from ("" for none).
	SnapshotID string
	// AttachedTo lists the servers the volume is attached to.
	AttachedTo []string
}

// Selector picks servers by Nova tags and availability zone. Empty fields do not
// filter. Semantics follow Nova's list filters: Tags are all required, TagsAny needs
// at least one, ExcludeTags drops a server carrying any of them.
type Selector struct {
	Tags              []string
	TagsAny           []string
	ExcludeTags       []string
	AvailabilityZones []string
}

// Matches reports whether a server with the given tags and zone is selected. Every
// implementation re-checks its list results with it, because a cloud may ignore the
// server-side filters (Nova below microversion 2.26 silently does).
func (s Selector) Matches(tags []string, az string) bool {
	have := make(map[string]bool, len(tags))
	for _, t := range tags {
		have[t] = true
	}
	for _, t := range s.Tags {
		if !have[t] {
			return false
		}
	}
	if len(s.TagsAny) > 0 {
		anyHit := false
		for _, t := range s.TagsAny {
			if have[t] {
				anyHit = true
				break
			}
		}
		if !anyHit {
			return false
		}
	}
	for _, t := range s.ExcludeTags {
		if have[t] {
			return false
		}
	}
	if len(s.AvailabilityZones) > 0 {
		for _, z := range s.AvailabilityZones {
			if z == az {
				return true
			}
		}
		return false
	}
	return true
}

// Image statuses of Glance v2 that imagekeeper distinguishes.
const (
	ImageQueued  = "queued"
	ImageSaving  = "saving"
	ImageActive  = "active"
	ImageKilled  = "killed"
	ImageDeleted = "deleted"
)

// Image is a Glance image as imagekeeper sees it.
type Image struct {
	ID        string
	Name      string
	Status    string
	Size      int64
	Protected bool
	// Properties holds every non-schema property as a string (Nova copies createImage
	// metadata here, so the stamp lives here).
	Properties map[string]string
	// Snapshots lists the Cinder snapshots named by block_device_mapping, in order.
	// Empty for an image-backed server's image.
	Snapshots []SnapshotRef
	CreatedAt time.Time
	UpdatedAt time.Time
}

// SnapshotRef is one volume snapshot named by an image's block_device_mapping.
type SnapshotRef struct {
	SnapshotID string
	DeviceName string
	BootIndex  *int
}

// Volume snapshot statuses of Cinder that imagekeeper distinguishes.
const (
	SnapshotCreating      = "creating"
	SnapshotAvailable     = "available"
	SnapshotError         = "error"
	SnapshotDeleting      = "deleting"
	SnapshotErrorDeleting = "error_deleting"
)

// Snapshot is a Cinder volume snapshot.
type Snapshot struct {
	ID        string
	Name      string
	VolumeID  string
	Status    string
	Size      int
	CreatedAt time.Time
}

// Cloud is everything imagekeeper asks of a cloud. Implementations must be safe for
// concurrent use and must honour ctx deadlines on every call.
type Cloud interface {
	// ListServers returns every server the selector picks, across all pages. The
	// result has already been re-checked with Selector.Matches.
	ListServers(ctx context.Context, sel Selector) ([]Server, error)
	// GetServer returns one server, ErrNotFound if it does not exist.
	GetServer(ctx context.Context, id string) (Server, error)
	// CreateImage asks Nova to image the server and returns the new image id, never
	// an empty one. It is never retried blindly: an unknown outcome is reported as
	// ErrUnknownOutcome. ErrBusy for a server with a task in progress or in ERROR.
	CreateImage(ctx context.Context, serverID, name string, metadata map[string]string) (string, error)
	// GetImage returns one image, ErrNotFound when Glance does not know it.
	GetImage(ctx context.Context, id string) (Image, error)
	// ListImages returns every image whose properties equal all of the given
	// key/value pairs (Glance property filters), across all pages.
	ListImages(ctx context.Context, properties map[string]string) ([]Image, error)
	// DeleteImage deletes an image. ErrNotFound means it was already gone;
	// ErrProtected means Glance refused because the image is protected.
	DeleteImage(ctx context.Context, id string) error
	// GetSnapshot returns one volume snapshot, ErrNotFound when Cinder does not know it.
	GetSnapshot(ctx context.Context, id string) (Snapshot, error)
	// ListSnapshots returns every volume snapshot of the project, across all pages.
	ListSnapshots(ctx context.Context) ([]Snapshot, error)
	// DeleteSnapshot asks Cinder to delete a snapshot; deletion is asynchronous, so
	// the snapshot may be visible (deleting) for a while. ErrNotFound means already
	// gone; ErrInUse means Cinder refused (a volume depends on it, or its state).
	DeleteSnapshot(ctx context.Context, id string) error

	// CreateServer boots a server (Nova POST /servers) and returns its id, never an
	// empty one. Like CreateImage it is never retried blindly: an unknown outcome
	// is ErrUnknownOutcome, and the caller looks for its stamped server (Metadata)
	// before it calls again. ErrQuota when a quota refuses it (the Reason says
	// which), ErrInvalid for a refused request (unknown flavor, image not active).
	CreateServer(ctx context.Context, req BootRequest) (string, error)
	// DeleteServer asks Nova to delete a server. ErrNotFound means already gone.
	// Volumes the server was given with delete_on_termination false (every volume
	// made from a volume-backed image's mapping) stay behind: see DeleteVolume.
	DeleteServer(ctx context.Context, id string) error
	// ConsoleOutput returns the last lines of the server's console log
	// (os-getConsoleOutput); lines <= 0 means all. ErrBusy while Nova cannot
	// give it (a server still building).
	ConsoleOutput(ctx context.Context, id string, lines int) (string, error)
	// GetVolume returns one Cinder volume, ErrNotFound when Cinder does not know it.
	GetVolume(ctx context.Context, id string) (Volume, error)
	// DeleteVolume asks Cinder to delete a volume; deletion is asynchronous.
	// ErrNotFound means already gone; ErrInUse means Cinder refused (attached,
	// or in a state that refuses deletion): try again once it is detached.
	DeleteVolume(ctx context.Context, id string) error
}
