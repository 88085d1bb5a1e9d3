package openstack

import (
	"context"
	"encoding/json"
	"net/url"
	"sort"

	"github.com/gophercloud/gophercloud/v2/openstack/image/v2/images"
	"github.com/gophercloud/gophercloud/v2/pagination"

	"github.com/imagekeeper/imagekeeper/cloud"
)

// propertyQuery is an images.ListOptsBuilder that adds exact-match property
// filters. images.ListOpts has no such field, but Glance treats every query key it
// does not know as an image property filter (Nova relies on it too).
type propertyQuery struct {
	base       images.ListOpts
	properties map[string]string
}

// ToImageListQuery implements images.ListOptsBuilder.
func (q propertyQuery) ToImageListQuery() (string, error) {
	s, err := q.base.ToImageListQuery()
	if err != nil {
		return "", err
	}
	u, err := url.Parse(s)
	if err != nil {
		return "", err
	}
	v := u.Query()
	keys := make([]string, 0, len(q.properties))
	for k := range q.properties {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		v.Set(k, q.properties[k])
	}
	if len(v) == 0 {
		return "", nil
	}
	return "?" + v.Encode(), nil
}

// GetImage returns one image with its string properties and the volume snapshots
// its block_device_mapping names.
func (c *Client) GetImage(ctx context.Context, id string) (cloud.Image, error) {
	ctx, cancel := c.callContext(ctx, opGetImage.service, opGetImage.name)
	defer cancel()
	im, err := images.Get(ctx, c.image, id).Extract()
	if err != nil {
		return cloud.Image{}, classify(opGetImage, id, err)
	}
	return toImage(opGetImage, im)
}

// ListImages returns every image whose properties equal all the given pairs,
// across all pages. An empty filter is refused: imagekeeper never needs every image
// of a project, and an accidental empty stamp must not turn into one.
func (c *Client) ListImages(ctx context.Context, properties map[string]string) ([]cloud.Image, error) {
	if len(properties) == 0 {
		return nil, &cloud.Error{Op: opListImages.desc, Kind: cloud.ErrInvalid, Reason: "no property filter given"}
	}
	ctx, cancel := c.callContext(ctx, opListImages.service, opListImages.name)
	defer cancel()
	q := propertyQuery{base: images.ListOpts{Limit: c.pageSize}, properties: properties}
	var out []cloud.Image
	err := images.List(c.image, q).EachPage(ctx, func(_ context.Context, page pagination.Page) (bool, error) {
		list, err := images.ExtractImages(page)
		if err != nil {
			return false, err
		}
		for i := range list {
			im, err := toImage(opListImages, &list[i])
			if err != nil {
				return false, err
			}
			// Re-check: a cloud that ignores unknown query keys must not hand us
			// images that are not ours.
			if hasProperties(im.Properties, properties) {
				out = append(out, im)
			}
		}
		return true, nil
	})
	if err != nil {
		return nil, classify(opListImages, "", err)
	}
	return out, nil
}

// DeleteImage deletes one image; a protected image is cloud.ErrProtected.
func (c *Client) DeleteImage(ctx context.Context, id string) error {
	ctx, cancel := c.callContext(ctx, opDeleteImage.service, opDeleteImage.name)
	defer cancel()
	return classify(opDeleteImage, id, images.Delete(ctx, c.image, id).ExtractErr())
}

func hasProperties(have, want map[string]string) bool {
	for k, v := range want {
		if got, ok := have[k]; !ok || got != v {
			return false
		}
	}
	return true
}

func toImage(o op, im *images.Image) (cloud.Image, error) {
	out := cloud.Image{
		ID:         im.ID,
		Name:       im.Name,
		Status:     string(im.Status),
		Size:       im.SizeBytes,
		Protected:  im.Protected,
		Properties: make(map[string]string, len(im.Properties)),
		CreatedAt:  im.CreatedAt,
		UpdatedAt:  im.UpdatedAt,
	}
	for k, v := range im.Properties {
		switch v := v.(type) {
		case nil:
		case string:
			out.Properties[k] = v
		default:
			// Glance properties are strings; a JSON value here (a list, a bool)
			// is kept in its JSON form so that nothing is lost.
			b, err := json.Marshal(v)
			if err != nil {
				continue
			}
			out.Properties[k] = string(b)
		}
	}
	if raw, ok := out.Properties["block_device_mapping"]; ok {
		refs, err := cloud.ParseBlockDeviceMapping(raw)
		if err != nil {
			return cloud.Image{}, &cloud.Error{Op: o.desc, ID: im.ID, Kind: cloud.ErrInvalid,
				Reason: "unreadable block_device_mapping property", Err: err}
		}
		out.Snapshots = refs
	}
	return out, nil
}
