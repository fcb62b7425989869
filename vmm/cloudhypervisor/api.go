package cloudhypervisor

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
)

// APIBase is the base URL of cloud-hypervisor's REST API; the host part is
// ignored, requests go to the Unix socket.
const APIBase = "http://localhost/api/v1/"

// Client talks to cloud-hypervisor's REST API over its --api-socket
// (cloud-hypervisor's vmm/src/api/openapi/cloud-hypervisor.yaml).
type Client struct {
	// Socket is the API socket's path.
	Socket string
	http   *http.Client
}

// NewClient returns a client for the API socket at socket.
func NewClient(socket string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
		DisableKeepAlives: true,
	}
	return &Client{Socket: socket, http: &http.Client{Transport: tr}}
}

// APIError is an API call that got an error status.
type APIError struct {
	Method, Endpoint string
	StatusCode       int
	// Body is the start of the response body.
	Body string
}

func (e *APIError) Error() string {
	msg := fmt.Sprintf("cloud-hypervisor API %s %s: %d %s", e.Method, e.Endpoint, e.StatusCode, http.StatusText(e.StatusCode))
	if b := strings.TrimSpace(e.Body); b != "" {
		msg += ": " + b
	}
	return msg
}

// maxAPIResponse caps what the client reads of a response.
const maxAPIResponse = 1 << 20

// call sends one request; in is sent as JSON when not nil, the response is
// decoded into out when not nil.
func (c *Client) call(ctx context.Context, method, endpoint string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("cloud-hypervisor API %s: %w", endpoint, err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, APIBase+endpoint, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("cloud-hypervisor API %s %s: %w", method, endpoint, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxAPIResponse))
	if err != nil {
		return fmt.Errorf("cloud-hypervisor API %s %s: %w", method, endpoint, err)
	}
	if resp.StatusCode/100 != 2 {
		if len(b) > 512 {
			b = b[:512]
		}
		return &APIError{Method: method, Endpoint: endpoint, StatusCode: resp.StatusCode, Body: string(b)}
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("cloud-hypervisor API %s %s: decoding the answer: %w", method, endpoint, err)
		}
	}
	return nil
}

// PingResponse is the answer to vmm.ping.
type PingResponse struct {
	BuildVersion string   `json:"build_version,omitempty"`
	Version      string   `json:"version"`
	PID          int      `json:"pid,omitempty"`
	Features     []string `json:"features,omitempty"`
}

// Ping asks the VMM for its version (GET vmm.ping).
func (c *Client) Ping(ctx context.Context) (*PingResponse, error) {
	var r PingResponse
	if err := c.call(ctx, http.MethodGet, "vmm.ping", nil, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

// ShutdownVMM ends the VMM process (PUT vmm.shutdown).
func (c *Client) ShutdownVMM(ctx context.Context) error {
	return c.call(ctx, http.MethodPut, "vmm.shutdown", nil, nil)
}

// Pause and Resume stop and restart the vCPUs (PUT vm.pause, vm.resume).
func (c *Client) Pause(ctx context.Context) error {
	return c.call(ctx, http.MethodPut, "vm.pause", nil, nil)
}

// Resume restarts the vCPUs of a paused VM (PUT vm.resume).
func (c *Client) Resume(ctx context.Context) error {
	return c.call(ctx, http.MethodPut, "vm.resume", nil, nil)
}

// Snapshot writes a paused VM's state to destinationURL, a file:// URL of a
// directory (PUT vm.snapshot).
func (c *Client) Snapshot(ctx context.Context, destinationURL string) error {
	return c.call(ctx, http.MethodPut, "vm.snapshot", map[string]string{"destination_url": destinationURL}, nil)
}
