package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	neturl "net/url"
	"strings"

	"dst/storage/engine"
)

// MaxStatusBytes bounds an answer Client reads.
const MaxStatusBytes = 4 << 20

// Client speaks to a storage's admin endpoint: what `dst status` and the
// torture harness use. Its methods are safe for concurrent use; each call
// is bounded by its context.
type Client struct {
	base string
	http *http.Client
}

// NewClient returns a client for the admin endpoint at addr, HOST:PORT or
// an http:// or https:// URL; hc nil means http.DefaultClient.
func NewClient(addr string, hc *http.Client) (*Client, error) {
	if addr == "" {
		return nil, fmt.Errorf("admin: empty address")
	}
	base := addr
	if !strings.HasPrefix(base, "http://") && !strings.HasPrefix(base, "https://") {
		base = "http://" + base
	}
	base = strings.TrimSuffix(base, "/")
	u, err := url.Parse(base)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("admin: address %q is neither HOST:PORT nor an http URL", addr)
	}
	if hc == nil {
		hc = http.DefaultClient
	}
	return &Client{base: base, http: hc}, nil
}

// Addr is the base URL the client speaks to.
func (c *Client) Addr() string { return c.base }

// Status returns GET /status, decoded and as the raw JSON body.
func (c *Client) Status(ctx context.Context) (Status, []byte, error) {
	var st Status
	body, err := c.do(ctx, http.MethodGet, "/status")
	if err != nil {
		return st, nil, err
	}
	if err := json.Unmarshal(body, &st); err != nil {
		return st, body, fmt.Errorf("admin: the answer is not a dst status: %w", err)
	}
	return st, body, nil
}

// Suspend takes member i out of service for maintenance (POST
// /members/{i}/suspend).
func (c *Client) Suspend(ctx context.Context, i int) error {
	_, err := c.do(ctx, http.MethodPost, fmt.Sprintf("/members/%d/suspend", i))
	return err
}

// Resume brings suspended member i back (POST /members/{i}/resume); it
// returns once the rejoin started: poll Status for the end of its resync.
func (c *Client) Resume(ctx context.Context, i int) error {
	_, err := c.do(ctx, http.MethodPost, fmt.Sprintf("/members/%d/resume", i))
	return err
}

// Replace puts the node at url in member i's position (POST
// /members/{i}/replace); force replaces a member in sync. It returns once
// the new node holds the position: poll Status for its copy.
func (c *Client) Replace(ctx context.Context, i int, url string, force bool) error {
	path := fmt.Sprintf("/members/%d/replace?url=%s", i, neturl.QueryEscape(url))
	if force {
		path += "&force=1"
	}
	_, err := c.do(ctx, http.MethodPost, path)
	return err
}

// AddMember adds the node at url as a replica of the mirror at path
// (POST /members/add); force overwrites a node carrying another
// storage. It returns once the replica is a member: poll Status for its
// copy.
func (c *Client) AddMember(ctx context.Context, mirror, url string, force bool) (ChangeResult, error) {
	path := fmt.Sprintf("/members/add?mirror=%s&url=%s", neturl.QueryEscape(mirror), neturl.QueryEscape(url))
	if force {
		path += "&force=1"
	}
	return c.change(ctx, path)
}

// RemoveMember removes mirror replica i (POST /members/{i}/remove).
func (c *Client) RemoveMember(ctx context.Context, i int) (ChangeResult, error) {
	return c.change(ctx, fmt.Sprintf("/members/%d/remove", i))
}

// change posts a membership change; an answer with an error is returned
// with it (its Layout is the membership that serves).
func (c *Client) change(ctx context.Context, path string) (ChangeResult, error) {
	var res ChangeResult
	body, err := c.do(ctx, http.MethodPost, path)
	var he *HTTPError
	if errors.As(err, &he) && json.Unmarshal([]byte(he.Body), &res) == nil && res.Error != "" {
		return res, fmt.Errorf("admin: %s", res.Error)
	} else if err != nil {
		return res, err
	}
	if err := json.Unmarshal(body, &res); err != nil {
		return res, fmt.Errorf("admin: the answer is not a membership change result: %w", err)
	}
	return res, nil
}

// Scrub runs a scrub of the storage's replicas (POST /scrub) and returns
// its result when it is done; repair rewrites what differs, rate bounds
// the bytes read per second (0: unlimited). A scrub that failed midway
// returns its partial result with the error.
func (c *Client) Scrub(ctx context.Context, repair bool, rate int64) (*engine.ScrubResult, error) {
	path := fmt.Sprintf("/scrub?rate=%d", rate)
	if repair {
		path += "&repair=1"
	}
	body, err := c.do(ctx, http.MethodPost, path)
	var he *HTTPError
	if errors.As(err, &he) && he.Code == http.StatusInternalServerError {
		body = []byte(he.Body)
	} else if err != nil {
		return nil, err
	}
	var res engine.ScrubResult
	if uerr := json.Unmarshal(body, &res); uerr != nil {
		return nil, fmt.Errorf("admin: the answer is not a scrub result: %w", uerr)
	}
	if res.Error != "" {
		return &res, fmt.Errorf("admin: scrub failed: %s", res.Error)
	}
	return &res, nil
}

// HTTPError is an admin answer other than 2xx.
type HTTPError struct {
	Method, URL string
	Code        int
	Body        string
}

func (e *HTTPError) Error() string {
	return fmt.Sprintf("admin: %s %s: %d %s: %s", e.Method, e.URL, e.Code, http.StatusText(e.Code), strings.TrimSpace(e.Body))
}

func (c *Client) do(ctx context.Context, method, path string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, nil)
	if err != nil {
		return nil, fmt.Errorf("admin: %w", err)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("admin: no answer: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxStatusBytes))
	if err != nil {
		return nil, fmt.Errorf("admin: reading %s %s: %w", method, c.base+path, err)
	}
	if resp.StatusCode/100 != 2 {
		return nil, &HTTPError{Method: method, URL: c.base + path, Code: resp.StatusCode, Body: string(bytes.TrimSpace(body))}
	}
	return body, nil
}
