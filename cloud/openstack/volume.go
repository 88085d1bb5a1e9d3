package openstack

import (
	"context"

	"github.com/gophercloud/gophercloud/v2/openstack/blockstorage/v3/snapshots"
	"github.com/gophercloud/gophercloud/v2/pagination"

	"github.com/imagekeeper/imagekeeper/cloud"
)

// GetSnapshot returns one Cinder volume snapshot.
func (c *Client) GetSnapshot(ctx context.Context, id string) (cloud.Snapshot, error) {
	ctx, cancel := c.callContext(ctx, opGetSnapshot.service, opGetSnapshot.name)
	defer cancel()
	s, err := snapshots.Get(ctx, c.volume, id).Extract()
	if err != nil {
		return cloud.Snapshot{}, classify(opGetSnapshot, id, err)
	}
	return toSnapshot(s), nil
}

// ListSnapshots returns every volume snapshot of the project, across all pages.
func (c *Client) ListSnapshots(ctx context.Context) ([]cloud.Snapshot, error) {
	ctx, cancel := c.callContext(ctx, opListSnapshots.service, opListSnapshots.name)
	defer cancel()
	var out []cloud.Snapshot
	err := snapshots.ListDetail(c.volume, snapshots.ListOpts{Limit: c.pageSize}).EachPage(ctx,
		func(_ context.Context, page pagination.Page) (bool, error) {
			list, err := snapshots.ExtractSnapshots(page)
			if err != nil {
				return false, err
			}
			for i := range list {
				out = append(out, toSnapshot(&list[i]))
			}
			return true, nil
		})
	if err != nil {
		return nil, classify(opListSnapshots, "", err)
	}
	return out, nil
}

// DeleteSnapshot asks Cinder to delete a snapshot. Cinder's 400 InvalidSnapshot
// (wrong state, part of a group) is cloud.ErrInUse; a snapshot with dependent
// volumes is accepted here and silently goes back to available, which the caller
// sees by polling.
func (c *Client) DeleteSnapshot(ctx context.Context, id string) error {
	ctx, cancel := c.callContext(ctx, opDeleteSnapshot.service, opDeleteSnapshot.name)
	defer cancel()
	return classify(opDeleteSnapshot, id, snapshots.Delete(ctx, c.volume, id).ExtractErr())
}

func toSnapshot(s *snapshots.Snapshot) cloud.Snapshot {
	return cloud.Snapshot{
		ID:        s.ID,
		Name:      s.Name,
		VolumeID:  s.VolumeID,
		Status:    s.Status,
		Size:      s.Size,
		CreatedAt: s.CreatedAt,
	}
}
