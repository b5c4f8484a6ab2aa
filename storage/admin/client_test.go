// Client speaks to a real Handler over HTTP: status decoded and raw,
// suspend and resume with the handler's refusals as HTTPError, and
// addresses checked before any request.
package admin_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"dst/internal/testkit"
	"dst/storage/admin"
)

func TestClient(t *testing.T) {
	h, _, _ := fixture(t)
	ctl := &fakeControl{}
	withControl := admin.NewHandler(admin.Options{Storage: &fakeStorage{size: 1}, Control: ctl})
	srv := httptest.NewServer(h)
	defer srv.Close()
	csrv := httptest.NewServer(withControl)
	defer csrv.Close()
	ctx := testkit.Context(t, 30*time.Second)

	c, err := admin.NewClient(srv.Listener.Addr().String(), nil)
	require.NoError(t, err)
	require.Equal(t, srv.URL, c.Addr(), "HOST:PORT becomes an http URL")
	st, body, err := c.Status(ctx)
	require.NoError(t, err)
	require.Equal(t, "disk", st.Export)
	require.Len(t, st.Members, 2)
	var raw map[string]any
	require.NoError(t, json.Unmarshal(body, &raw), "the raw body is the JSON document")
	require.Equal(t, "disk", raw["export"])

	cc, err := admin.NewClient(csrv.URL+"/", srv.Client())
	require.NoError(t, err)
	require.NoError(t, cc.Suspend(ctx, 1))
	require.NoError(t, cc.Resume(ctx, 1))
	var herr *admin.HTTPError
	require.ErrorAs(t, cc.Suspend(ctx, 0), &herr)
	require.Equal(t, http.StatusConflict, herr.Code)
	require.Contains(t, herr.Error(), "no in-sync replica")
	require.Equal(t, []string{"suspend 1", "release 1", "suspend 0"}, ctl.calls)

	// The handler without Control has no maintenance endpoints.
	require.ErrorAs(t, c.Suspend(ctx, 1), &herr)
	require.Equal(t, http.StatusNotFound, herr.Code)

	for _, bad := range []string{"", "http://", "::nonsense::"} {
		_, err := admin.NewClient(bad, nil)
		require.Error(t, err, "address %q", bad)
	}
	dead, err := admin.NewClient("127.0.0.1:1", nil)
	require.NoError(t, err)
	_, _, err = dead.Status(ctx)
	require.ErrorContains(t, err, `admin: no answer: Get "http://127.0.0.1:1/status"`)
}
