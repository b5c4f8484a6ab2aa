// Package config reads the YAML file of `dst serve`: where the storage
// listens, what it is made of (a tree of layouts over member URLs), who may
// use it, and how its nodes and resync behave. Every error names the file,
// the line and the field, for example
//
//	storage.yaml:7: storage.members[2].chunk: "64KB" is not a size (use 64KiB)
//
// and every error of a file is reported at once, in line order. Unknown
// fields are errors (a typo must not silently leave a default in force).
//
// # Reference
//
//	listen: 127.0.0.1:10809   # NBD address of the storage, HOST:PORT (port 0 picks one).
//	                          # Default 127.0.0.1:10809.
//	admin: 127.0.0.1:10810    # status and metrics over HTTP, HOST:PORT, or "off".
//	                          # Default 127.0.0.1:10810.
//	storage:                  # required: the layout tree
//	  layout: mirror          # linear | stripe | mirror
//	  chunk: 64KiB            # stripe only, required there: bytes per chunk
//	  members:                # one or more, in order; each is either
//	    - nbd://HOST[:PORT][/EXPORT]          # a remote node (any NBD server; port 10809 by default)
//	    - nbd+unix:///EXPORT?socket=PATH      # a remote node on a Unix socket
//	    - file:/PATH                          # a local node: file or block device, which must exist
//	                                          # (file:PATH is relative to the config file's folder)
//	    - layout: stripe                      # a nested layout, same fields as storage
//	      chunk: 64KiB
//	      members: [nbd://10.0.0.3:10809, nbd://10.0.0.4:10809]
//	export:                   # how the storage is offered over NBD (all optional)
//	  name: ""                # export name; default "" (a lone export also answers to any
//	                          # client asking for the default name)
//	  description: ""         # shown to clients that ask
//	  read_only: false        # serve read-only to everyone
//	  allow: ["127.0.0.0/8=rw", "10.0.0.0/8=ro"]  # CIDR=ro|rw, longest prefix wins, others are
//	                          # refused; default (no list): everyone may read and write
//	  tls:                    # STARTTLS; paths relative to the config file's folder
//	    cert: server.pem      # certificate and key go together
//	    key: server-key.pem
//	    ca: clients-ca.pem    # optional: require client certificates signed by it
//	    required: false       # refuse clients that do not start TLS
//	node:                     # remote nodes (nbd:// members)
//	  dial_timeout: 5s        # one connection attempt (dial and handshake)
//	  connect_timeout: 10s    # how long start-up waits for a node's first connection
//	  request_timeout: 5s     # one try of a request; passing it fences the connection
//	  retries: 5              # resends after the first try before the node counts as gone
//	  backoff_min: 50ms       # pause between reconnects: doubles from min to max
//	  backoff_max: 2s
//	  ping_interval: 1s       # ping a connection idle this long; "off" disables
//	resync:                   # mirror resync
//	  rate: 100MiB            # bytes per second ("/s" may follow); 0 or "unlimited" lifts it
//	  interval: 1s            # how often gone members are probed
//	activity_log:             # mirrors mark the regions being written, so an unclean stop
//	                          # recopies only those (see package engine)
//	  regions: 1024           # active regions per mirror at most; "off" keeps no log (an
//	                          # unclean stop then copies replicas whole)
//	  quiet: 5s               # a region stays marked this long after its last write
//	scrub:                    # scheduled scrubs of the mirrors (md's periodic check; dst scrub
//	                          # runs one by hand)
//	  interval: off           # time between scrub starts, the first one interval after start
//	  rate: unlimited         # bytes read per second over all replicas, such as 100MiB/s
//	  repair: false           # rewrite differing ranges from the first in-sync replica
//	  digests: true           # compare replicas behind dst exports by the CRC-32C their
//	                          # nodes compute (4 bytes per 4 KiB cross the network); a
//	                          # region whose digests differ is read
//	region_size: 1MiB         # bytes per write-intent bit: a power of two, 4KiB..1GiB
//	allow_degraded: false     # start a mirror with members missing or not answering (after
//	                          # connect_timeout): it may have held newer data; it joins, copying
//	                          # what it missed, when it answers as the member recorded
//	shutdown_timeout: 6s      # bounds a stop: a third for requests in flight, a third for the
//	                          # final FLUSH (a member that does not answer it leaves service
//	                          # where a replica stands in), a third for marking superblocks clean
//	replace: [nbd://10.0.0.2:10809]  # members that may be overwritten although their superblock is
//	                          # foreign or damaged (new media for a lost member): copied whole
//
// Sizes are whole bytes with an optional IEC suffix (B, KiB, MiB, GiB, TiB,
// PiB); SI suffixes (KB, MB, ...) are refused as ambiguous. Durations are
// Go durations (250ms, 5s, 1m30s). YAML anchors and aliases are refused.
package config

import (
	"time"

	"dst/internal/yamlpos"
	"dst/storage/engine"
	"dst/storage/export"
	"dst/storage/meta"
	"dst/storage/node"
	"dst/storage/spec"
)

// Defaults of Config.
const (
	DefaultListen         = "127.0.0.1:10809"
	DefaultAdmin          = "127.0.0.1:10810"
	DefaultResyncRate     = 100 << 20 // bytes per second
	DefaultResyncInterval = time.Second
	DefaultRegionSize     = meta.DefaultRegionSize
	// DefaultShutdownTimeout bounds how long `dst serve` takes to stop.
	DefaultShutdownTimeout = 6 * time.Second
	// MaxBytes bounds the size of a config file Load reads.
	MaxBytes = 1 << 20
	// MaxRetries bounds node.retries.
	MaxRetries = 100
	// maxErrors bounds the errors reported for one file.
	maxErrors = 20
)

// Config is a parsed `dst serve` configuration; Parse fills every default.
type Config struct {
	// Source is the name of the file the config was read from.
	Source string
	// Listen is the NBD address of the storage (HOST:PORT).
	Listen string
	// Admin is the HTTP address of status and metrics; empty when
	// disabled (admin: off).
	Admin string
	// Storage is the layout tree; it passed Validate. Each node's Where
	// is "FILE:LINE".
	Storage spec.Tree
	// Export says how the storage is served.
	Export Export
	// Node configures remote members.
	Node Node
	// Resync configures mirror resync.
	Resync Resync
	// Activity configures the mirrors' activity log.
	Activity Activity
	// Scrub schedules scrubs of the mirrors.
	Scrub Scrub
	// RegionSize is the bytes per write-intent bit, a power of two in
	// [4 KiB, 1 GiB].
	RegionSize int64
	// AllowDegraded lets a mirror start with members missing, also a
	// remote member that makes no connection within the connect timeout
	// (node.OpenOptions.Background): the member table of the others gives
	// its identity and geometry, checked when it answers.
	AllowDegraded bool
	// ShutdownTimeout bounds a stop (see serve.Server.Close); positive.
	ShutdownTimeout time.Duration
	// Replace are the member URLs (as the storage spells them) that may be
	// overwritten although their superblock is foreign or damaged; they
	// are copied whole.
	Replace []string
}

// Export says how the storage is offered over NBD.
type Export struct {
	Name        string
	Description string
	ReadOnly    bool
	// Allow is the access list; the zero ACL lets everyone read and write.
	Allow export.ACL
	// TLS, when Cert is set, enables STARTTLS.
	TLS TLS
}

// TLS names the PEM files of the export's TLS, resolved against the
// config file's folder.
type TLS struct {
	Cert, Key, CA string
	Required      bool
	// Where is "FILE:LINE" of the tls field, for errors found when the
	// files are loaded.
	Where string
}

// Enabled reports whether TLS is configured.
func (t TLS) Enabled() bool { return t.Cert != "" }

// Files returns the files as export.LoadTLS takes them.
func (t TLS) Files() export.TLSFiles {
	return export.TLSFiles{CertFile: t.Cert, KeyFile: t.Key, CAFile: t.CA}
}

// Node configures remote members. Zero durations are the node package's
// defaults (Parse fills them in, so a printed config shows them).
type Node struct {
	DialTimeout    time.Duration
	ConnectTimeout time.Duration
	RequestTimeout time.Duration
	// Retries are the resends after the first try.
	Retries      int
	BackoffMin   time.Duration
	BackoffMax   time.Duration
	PingInterval time.Duration // negative: no pings
}

// RemoteOptions returns the options of a remote member.
func (n Node) RemoteOptions() node.RemoteOptions {
	o := node.RemoteOptions{
		DialTimeout:    n.DialTimeout,
		RequestTimeout: n.RequestTimeout,
		Retries:        n.Retries,
		BackoffMin:     n.BackoffMin,
		BackoffMax:     n.BackoffMax,
		PingInterval:   n.PingInterval,
	}
	if n.Retries == 0 {
		o.Retries = -1 // node: zero means the default, negative none
	}
	return o
}

// OpenOptions returns the options node.Open takes for a member.
func (n Node) OpenOptions() node.OpenOptions {
	return node.OpenOptions{Remote: n.RemoteOptions(), ConnectTimeout: n.ConnectTimeout}
}

// Resync configures mirror resync.
type Resync struct {
	// RateBytesPerSec bounds the copy rate; zero is unlimited.
	RateBytesPerSec int64
	// Interval is the time between probes of gone members.
	Interval time.Duration
	// Failover is how long a mirror member may stall before it is taken
	// out of service (engine.MonitorOptions.Failover); -1 is off.
	Failover time.Duration
}

// Scrub schedules scrubs (engine.ScrubSchedule): md's periodic check.
type Scrub struct {
	// Interval between scrub starts; -1 (off) schedules none.
	Interval time.Duration
	// RateBytesPerSec bounds the bytes a scrub reads per second over all
	// replicas; zero is unlimited.
	RateBytesPerSec int64
	// Repair rewrites differing ranges from the first in-sync replica.
	Repair bool
	// NoDigests (digests: false) reads every replica to compare it, also
	// those behind dst exports, which can hash their data where it is
	// (engine.AssembleOptions.OpenDigests).
	NoDigests bool
}

// Activity configures the mirrors' activity log (engine.Options).
type Activity struct {
	// Regions bounds the active regions of a mirror; -1 is off, 0 the
	// engine's default.
	Regions int
	// Quiet is how long a region stays marked after its last write; 0 is
	// the engine's default.
	Quiet time.Duration
}

// MaxActivityRegions bounds activity_log.regions.
const MaxActivityRegions = 1 << 20

// EngineOptions returns the engine options the config sets.
func (c *Config) EngineOptions() engine.Options {
	return engine.Options{ActivityRegions: c.Activity.Regions, ActivityQuiet: c.Activity.Quiet}
}

// MonitorOptions returns the options of the engine's monitor.
func (c *Config) MonitorOptions() engine.MonitorOptions {
	return engine.MonitorOptions{Interval: c.Resync.Interval, ResyncBytesPerSec: c.Resync.RateBytesPerSec,
		Failover: c.Resync.Failover,
		Scrub:    engine.ScrubSchedule{Interval: c.Scrub.Interval, Rate: c.Scrub.RateBytesPerSec, Repair: c.Scrub.Repair}}
}

// defaults returns a Config with every default filled in.
func defaults(source string) *Config {
	return &Config{
		Source: source,
		Listen: DefaultListen,
		Admin:  DefaultAdmin,
		Node: Node{
			DialTimeout:    node.DefaultDialTimeout,
			ConnectTimeout: node.DefaultConnectTimeout,
			RequestTimeout: node.DefaultRequestTimeout,
			Retries:        node.DefaultRetries,
			BackoffMin:     node.DefaultBackoffMin,
			BackoffMax:     node.DefaultBackoffMax,
			PingInterval:   node.DefaultPingInterval,
		},
		Resync:          Resync{RateBytesPerSec: DefaultResyncRate, Interval: DefaultResyncInterval, Failover: engine.DefaultFailover},
		RegionSize:      DefaultRegionSize,
		ShutdownTimeout: DefaultShutdownTimeout,
	}
}

// Error is one problem of a config file, at a line, in a field; Errors
// are every problem of one file, in line order. Both are the YAML kit's
// (internal/yamlpos), which the scenario files share.
type (
	Error  = yamlpos.Error
	Errors = yamlpos.Errors
)
