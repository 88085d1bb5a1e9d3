package cloudtest

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/imagekeeper/imagekeeper/cloud"
)

// Mock is a cloud.Cloud whose methods call the function fields. A method whose
// field is nil fails the call with an error naming it, so a test states exactly
// which calls it expects. Calls records every call; Mock is safe for concurrent use.
type Mock struct {
	ListServersFunc    func(ctx context.Context, sel cloud.Selector) ([]cloud.Server, error)
	GetServerFunc      func(ctx context.Context, id string) (cloud.Server, error)
	CreateImageFunc    func(ctx context.Context, serverID, name string, metadata map[string]string) (string, error)
	GetImageFunc       func(ctx context.Context, id string) (cloud.Image, error)
	ListImagesFunc     func(ctx context.Context, properties map[string]string) ([]cloud.Image, error)
	DeleteImageFunc    func(ctx context.Context, id string) error
	GetSnapshotFunc    func(ctx context.Context, id string) (cloud.Snapshot, error)
	ListSnapshotsFunc  func(ctx context.Context) ([]cloud.Snapshot, error)
	DeleteSnapshotFunc func(ctx context.Context, id string) error
	CreateServerFunc   func(ctx context.Context, req cloud.BootRequest) (string, error)
	DeleteServerFunc   func(ctx context.Context, id string) error
	ConsoleOutputFunc  func(ctx context.Context, id string, lines int) (string, error)
	GetVolumeFunc      func(ctx context.Context, id string) (cloud.Volume, error)
	DeleteVolumeFunc   func(ctx context.Context, id string) error

	mu    sync.Mutex
	calls []Call
}

// Call is one recorded call of a Mock: the operation and its id argument (server,
// image or snapshot id; empty for listings).
type Call struct {
	Op Op
	ID string
}

var _ cloud.Cloud = (*Mock)(nil)

// Calls returns the calls made so far, in order.
func (m *Mock) Calls() []Call {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]Call(nil), m.calls...)
}

// CallCount returns how many calls of op were made.
func (m *Mock) CallCount(op Op) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for _, c := range m.calls {
		if c.Op == op {
			n++
		}
	}
	return n
}

func (m *Mock) record(op Op, id string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.calls = append(m.calls, Call{Op: op, ID: id})
}

// ErrNotMocked is returned (wrapped) by a Mock method whose function field is nil.
var ErrNotMocked = errors.New("cloudtest: method not mocked")

func notMocked(op Op) error { return fmt.Errorf("%s: %w", op, ErrNotMocked) }

// ListServers implements cloud.Cloud.
func (m *Mock) ListServers(ctx context.Context, sel cloud.Selector) ([]cloud.Server, error) {
	m.record(OpListServers, "")
	if m.ListServersFunc == nil {
		return nil, notMocked(OpListServers)
	}
	return m.ListServersFunc(ctx, sel)
}

// GetServer implements cloud.Cloud.
func (m *Mock) GetServer(ctx context.Context, id string) (cloud.Server, error) {
	m.record(OpGetServer, id)
	if m.GetServerFunc == nil {
		return cloud.Server{}, notMocked(OpGetServer)
	}
	return m.GetServerFunc(ctx, id)
}

// CreateImage implements cloud.Cloud.
func (m *Mock) CreateImage(ctx context.Context, serverID, name string, metadata map[string]string) (string, error) {
	m.record(OpCreateImage, serverID)
	if m.CreateImageFunc == nil {
		return "", notMocked(OpCreateImage)
	}
	return m.CreateImageFunc(ctx, serverID, name, metadata)
}

// GetImage implements cloud.Cloud.
func (m *Mock) GetImage(ctx context.Context, id string) (cloud.Image, error) {
	m.record(OpGetImage, id)
	if m.GetImageFunc == nil {
		return cloud.Image{}, notMocked(OpGetImage)
	}
	return m.GetImageFunc(ctx, id)
}

// ListImages implements cloud.Cloud.
func (m *Mock) ListImages(ctx context.Context, properties map[string]string) ([]cloud.Image, error) {
	m.record(OpListImages, "")
	if m.ListImagesFunc == nil {
		return nil, notMocked(OpListImages)
	}
	return m.ListImagesFunc(ctx, properties)
}

// DeleteImage implements cloud.Cloud.
func (m *Mock) DeleteImage(ctx context.Context, id string) error {
	m.record(OpDeleteImage, id)
	if m.DeleteImageFunc == nil {
		return notMocked(OpDeleteImage)
	}
	return m.DeleteImageFunc(ctx, id)
}

// GetSnapshot implements cloud.Cloud.
func (m *Mock) GetSnapshot(ctx context.Context, id string) (cloud.Snapshot, error) {
	m.record(OpGetSnapshot, id)
	if m.GetSnapshotFunc == nil {
		return cloud.Snapshot{}, notMocked(OpGetSnapshot)
	}
	return m.GetSnapshotFunc(ctx, id)
}

// ListSnapshots implements cloud.Cloud.
func (m *Mock) ListSnapshots(ctx context.Context) ([]cloud.Snapshot, error) {
	m.record(OpListSnapshots, "")
	if m.ListSnapshotsFunc == nil {
		return nil, notMocked(OpListSnapshots)
	}
	return m.ListSnapshotsFunc(ctx)
}

// DeleteSnapshot implements cloud.Cloud.
func (m *Mock) DeleteSnapshot(ctx context.Context, id string) error {
	m.record(OpDeleteSnapshot, id)
	if m.DeleteSnapshotFunc == nil {
		return notMocked(OpDeleteSnapshot)
	}
	return m.DeleteSnapshotFunc(ctx, id)
}

// CreateServer implements cloud.Cloud.
func (m *Mock) CreateServer(ctx context.Context, req cloud.BootRequest) (string, error) {
	m.record(OpCreateServer, req.ImageID)
	if m.CreateServerFunc == nil {
		return "", notMocked(OpCreateServer)
	}
	return m.CreateServerFunc(ctx, req)
}

// DeleteServer implements cloud.Cloud.
func (m *Mock) DeleteServer(ctx context.Context, id string) error {
	m.record(OpDeleteServer, id)
	if m.DeleteServerFunc == nil {
		return notMocked(OpDeleteServer)
	}
	return m.DeleteServerFunc(ctx, id)
}

// ConsoleOutput implements cloud.Cloud.
func (m *Mock) ConsoleOutput(ctx context.Context, id string, lines int) (string, error) {
	m.record(OpConsoleOutput, id)
	if m.ConsoleOutputFunc == nil {
		return "", notMocked(OpConsoleOutput)
	}
	return m.ConsoleOutputFunc(ctx, id, lines)
}

// GetVolume implements cloud.Cloud.
func (m *Mock) GetVolume(ctx context.Context, id string) (cloud.Volume, error) {
	m.record(OpGetVolume, id)
	if m.GetVolumeFunc == nil {
		return cloud.Volume{}, notMocked(OpGetVolume)
	}
	return m.GetVolumeFunc(ctx, id)
}

// DeleteVolume implements cloud.Cloud.
func (m *Mock) DeleteVolume(ctx context.Context, id string) error {
	m.record(OpDeleteVolume, id)
	if m.DeleteVolumeFunc == nil {
		return notMocked(OpDeleteVolume)
	}
	return m.DeleteVolumeFunc(ctx, id)
}
