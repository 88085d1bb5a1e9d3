package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"time"
)

// simClient speaks the simulator's /_sim/ control API. It mirrors the JSON of
// cloud/simcloud's exported types without importing the package: the soak checks
// the simulator over the wire, as a person with curl would.
type simClient struct {
	base string
	hc   *http.Client
}

type simServer struct {
	ID        string            `json:"id"`
	Name      string            `json:"name"`
	Status    string            `json:"status"`
	AZ        string            `json:"az"`
	Tags      []string          `json:"tags"`
	VolumeIDs []string          `json:"volume_ids"`
	ImageProp map[string]string `json:"image_properties,omitempty"`
	Metadata  map[string]string `json:"metadata,omitempty"`
}

// simVolume is a volume the simulator made from a snapshot (a restore or a drill).
type simVolume struct {
	ID         string `json:"id"`
	SnapshotID string `json:"snapshot_id"`
	Status     string `json:"status"`
	ServerID   string `json:"server_id,omitempty"`
}

type simImage struct {
	ID          string            `json:"id"`
	Name        string            `json:"name"`
	Status      string            `json:"status"`
	Protected   bool              `json:"protected"`
	Properties  map[string]string `json:"properties"`
	ServerID    string            `json:"server_id,omitempty"`
	SnapshotIDs []string          `json:"snapshot_ids,omitempty"`
	CreatedAt   time.Time         `json:"created_at"`
}

type simSnapshot struct {
	ID               string `json:"id"`
	Name             string `json:"name"`
	VolumeID         string `json:"volume_id"`
	Status           string `json:"status"`
	DependentVolumes int    `json:"dependent_volumes"`
}

type simState struct {
	Now       time.Time      `json:"now"`
	Servers   []simServer    `json:"servers"`
	Images    []simImage     `json:"images"`
	Snapshots []simSnapshot  `json:"snapshots"`
	Volumes   []simVolume    `json:"volumes"`
	Requests  map[string]int `json:"requests"`
}

func newSimClient(base string) *simClient {
	return &simClient{base: base, hc: &http.Client{Timeout: 20 * time.Second}}
}

// do sends one control request; body is JSON-encoded when not nil and the answer
// decoded into out when out is not nil.
func (c *simClient) do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+"/_sim"+path, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("%s /_sim%s: %w", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("%s /_sim%s: read: %w", method, path, err)
	}
	if resp.StatusCode >= 300 {
		return fmt.Errorf("%s /_sim%s: %s: %s", method, path, resp.Status, bytes.TrimSpace(data))
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("%s /_sim%s: decode: %w", method, path, err)
		}
	}
	return nil
}

func (c *simClient) state(ctx context.Context) (simState, error) {
	var st simState
	err := c.do(ctx, http.MethodGet, "/state", nil, &st)
	return st, err
}

func (c *simClient) images(ctx context.Context) ([]simImage, error) {
	var ims []simImage
	err := c.do(ctx, http.MethodGet, "/images", nil, &ims)
	return ims, err
}

func (c *simClient) addServer(ctx context.Context, spec map[string]any) (string, error) {
	var out struct {
		ID string `json:"id"`
	}
	err := c.do(ctx, http.MethodPost, "/servers", spec, &out)
	return out.ID, err
}

func (c *simClient) putImage(ctx context.Context, im map[string]any) (string, error) {
	var out struct {
		ID string `json:"id"`
	}
	err := c.do(ctx, http.MethodPost, "/images", im, &out)
	return out.ID, err
}

func (c *simClient) putSnapshot(ctx context.Context, sn map[string]any) (string, error) {
	var out struct {
		ID string `json:"id"`
	}
	err := c.do(ctx, http.MethodPost, "/snapshots", sn, &out)
	return out.ID, err
}

func (c *simClient) setFault(ctx context.Context, f map[string]any) (int, error) {
	var out struct {
		ID int `json:"id"`
	}
	err := c.do(ctx, http.MethodPost, "/faults", f, &out)
	return out.ID, err
}

func (c *simClient) clearFault(ctx context.Context, id int) error {
	return c.do(ctx, http.MethodDelete, fmt.Sprintf("/faults/%d", id), nil, nil)
}

func (c *simClient) clearFaults(ctx context.Context) error {
	return c.do(ctx, http.MethodDelete, "/faults", nil, nil)
}
