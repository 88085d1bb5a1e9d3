package openstack

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/gophercloud/gophercloud/v2"
	"github.com/gophercloud/gophercloud/v2/openstack/blockstorage/v3/volumes"
	"github.com/gophercloud/gophercloud/v2/openstack/compute/v2/flavors"
	"github.com/gophercloud/gophercloud/v2/openstack/compute/v2/servers"
	"github.com/gophercloud/gophercloud/v2/pagination"

	"github.com/imagekeeper/imagekeeper/cloud"
)

// CreateServer boots a server with one POST /servers carrying imageRef, for both
// kinds of image: Nova itself turns a volume-backed image's block_device_mapping
// into new volumes made from the snapshots it names (nova/compute/api.py,
// _check_and_transform_bdm merging _get_image_defined_bdms), exactly as it does
// for `openstack server create --image`. The flavor may be given by name: it is
// resolved to an id first, because flavorRef takes ids only. Like CreateImage it
// is sent once: a lost answer is cloud.ErrUnknownOutcome.
func (c *Client) CreateServer(ctx context.Context, req cloud.BootRequest) (string, error) {
	flavorID, err := c.flavorID(ctx, req.Flavor)
	if err != nil {
		return "", err
	}
	opts := servers.CreateOpts{
		Name:             req.Name,
		ImageRef:         req.ImageID,
		FlavorRef:        flavorID,
		AvailabilityZone: req.AvailabilityZone,
		Metadata:         req.Metadata,
	}
	switch req.Network {
	case "", cloud.NetworkAuto, cloud.NetworkNone:
		n := req.Network
		if n == "" {
			n = cloud.NetworkAuto
		}
		if atLeast(c.mvMajor, c.mvMinor, 2, 37) {
			// From 2.37 on Nova requires "networks"; below it, leaving it out
			// means auto and "none" cannot be said.
			opts.Networks = n
		} else if n == cloud.NetworkNone {
			return "", &cloud.Error{Op: opCreateServer.desc, Kind: cloud.ErrInvalid,
				Reason: fmt.Sprintf("compute microversion %s is below 2.37: Nova cannot boot a server without a network", c.microversion)}
		}
	default:
		opts.Networks = []servers.Network{{UUID: req.Network}}
	}
	ctx, cancel := context.WithTimeout(withOp(ctx, opCreateServer.service, opCreateServer.name), c.createTimeout)
	defer cancel()
	s, err := servers.Create(ctx, c.compute, opts, nil).Extract()
	if err != nil {
		var ce *cloud.Error
		if errors.As(err, &ce) {
			return "", err
		}
		if _, answered := responseError(err); !answered && !isTransportError(err) {
			// gophercloud refused to build the request: nothing was sent.
			return "", &cloud.Error{Op: opCreateServer.desc, Kind: cloud.ErrInvalid, Err: err}
		}
		return "", classify(opCreateServer, "", err)
	}
	if s.ID == "" {
		return "", &cloud.Error{Op: opCreateServer.desc, Status: http.StatusAccepted, Kind: cloud.ErrUnknownOutcome,
			Reason: "accepted, but the answer carries no server id"}
	}
	return s.ID, nil
}

// isTransportError reports whether err came from sending the request (as opposed
// to gophercloud refusing to build it, or decoding the answer).
func isTransportError(err error) bool {
	return notSent(err) || isConnectionError(err) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled)
}

// flavorID resolves a flavor id or name: GET /flavors/{ref} first, and on 404
// the flavor list, matched by name.
func (c *Client) flavorID(ctx context.Context, ref string) (string, error) {
	if ref == "" {
		return "", &cloud.Error{Op: opCreateServer.desc, Kind: cloud.ErrInvalid, Reason: "no flavor given"}
	}
	cctx, cancel := c.callContext(ctx, opGetFlavor.service, opGetFlavor.name)
	defer cancel()
	f, err := flavors.Get(cctx, c.compute, ref).Extract()
	if err == nil {
		return f.ID, nil
	}
	if !gophercloud.ResponseCodeIs(err, http.StatusNotFound) {
		return "", classify(opGetFlavor, ref, err)
	}
	var id string
	err = flavors.ListDetail(c.compute, flavors.ListOpts{AccessType: flavors.AllAccess}).EachPage(cctx,
		func(_ context.Context, page pagination.Page) (bool, error) {
			list, err := flavors.ExtractFlavors(page)
			if err != nil {
				return false, err
			}
			for _, f := range list {
				if f.Name == ref {
					id = f.ID
					return false, nil
				}
			}
			return true, nil
		})
	if err != nil {
		return "", classify(opGetFlavor, ref, err)
	}
	if id == "" {
		return "", &cloud.Error{Op: opCreateServer.desc, ID: ref, Status: http.StatusNotFound, Kind: cloud.ErrInvalid,
			Reason: fmt.Sprintf("Flavor %s could not be found.", ref)}
	}
	return id, nil
}

// DeleteServer deletes a server (204; the volumes of its mapping stay behind).
func (c *Client) DeleteServer(ctx context.Context, id string) error {
	ctx, cancel := c.callContext(ctx, opDeleteServer.service, opDeleteServer.name)
	defer cancel()
	return classify(opDeleteServer, id, servers.Delete(ctx, c.compute, id).ExtractErr())
}

// ConsoleOutput reads the console log with the os-getConsoleOutput action; Nova's
// 409 for a server that is not ready yet is cloud.ErrBusy.
func (c *Client) ConsoleOutput(ctx context.Context, id string, lines int) (string, error) {
	ctx, cancel := c.callContext(ctx, opConsoleOutput.service, opConsoleOutput.name)
	defer cancel()
	opts := servers.ShowConsoleOutputOpts{}
	if lines > 0 {
		opts.Length = lines
	}
	out, err := servers.ShowConsoleOutput(ctx, c.compute, id, opts).Extract()
	if err != nil {
		return "", classify(opConsoleOutput, id, err)
	}
	return out, nil
}

// GetVolume returns one Cinder volume.
func (c *Client) GetVolume(ctx context.Context, id string) (cloud.Volume, error) {
	ctx, cancel := c.callContext(ctx, opGetVolume.service, opGetVolume.name)
	defer cancel()
	v, err := volumes.Get(ctx, c.volume, id).Extract()
	if err != nil {
		return cloud.Volume{}, classify(opGetVolume, id, err)
	}
	out := cloud.Volume{ID: v.ID, Name: v.Name, Status: v.Status, SnapshotID: v.SnapshotID}
	for _, a := range v.Attachments {
		out.AttachedTo = append(out.AttachedTo, a.ServerID)
	}
	return out, nil
}

// DeleteVolume asks Cinder to delete a volume (202, asynchronous); Cinder's 400
// InvalidVolume for an attached volume is cloud.ErrInUse.
func (c *Client) DeleteVolume(ctx context.Context, id string) error {
	ctx, cancel := c.callContext(ctx, opDeleteVolume.service, opDeleteVolume.name)
	defer cancel()
	return classify(opDeleteVolume, id, volumes.Delete(ctx, c.volume, id, volumes.DeleteOpts{}).ExtractErr())
}
