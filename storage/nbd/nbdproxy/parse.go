package nbdproxy

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync/atomic"

	"dst/storage/nbd"
)

// copyBytes is the chunk a byte-for-byte forward reads at once.
const copyBytes = 64 << 10

var be = binary.BigEndian

// c2s runs the client->server pump. When the client goes away it waits
// for the held requests to be delivered, then half-closes upstream so the
// server finishes what it received; any other failure kills the
// connection.
func (c *proxyConn) c2s() {
	err := c.c2sLoop()
	if errors.Is(err, errClient) && c.waitHeld() == nil {
		if cw, ok := c.server.(interface{ CloseWrite() error }); ok && cw.CloseWrite() == nil {
			return
		}
	}
	var count *atomic.Int64
	if errors.Is(err, errLimit) {
		count = &c.p.st.errors
	}
	if c.kill(false, count) && !errors.Is(err, errClient) {
		c.p.log.Debug("proxy: client side ended", "conn", c.id, "err", err)
	}
}

// errLimit ends a connection that exceeded a limit of the proxy.
var errLimit = errors.New("nbdproxy: proxy limit")

func (c *proxyConn) c2sLoop() error {
	h := c.chdr[:]
	if err := c.readClient(h[:4]); err != nil {
		return err
	}
	if be.Uint32(h) != nbd.MagicRequest { // newstyle: the client flags
		c.mu.Lock()
		c.noZeroes = be.Uint32(h)&nbd.ClientNoZeroes != 0
		c.mu.Unlock()
		if err := c.forward(h[:4], 0); err != nil {
			return err
		}
		if err := c.readClient(h[:4]); err != nil {
			return err
		}
	}
	for {
		var err error
		switch be.Uint32(h) {
		case nbd.MagicRequest:
			err = c.request(h)
		case uint32(nbd.MagicOption >> 32):
			err = c.option(h)
		default:
			return c.rawToServer(h[:4])
		}
		if err != nil {
			return err
		}
		if err := c.readClient(h[:4]); err != nil {
			return err
		}
	}
}

// option forwards a handshake option whose first 4 bytes are in h.
func (c *proxyConn) option(h []byte) error {
	if err := c.readClient(h[4:nbd.OptionHeaderBytes]); err != nil {
		return err
	}
	if be.Uint64(h) != nbd.MagicOption {
		return c.rawToServer(h[:nbd.OptionHeaderBytes])
	}
	if nbd.Option(be.Uint32(h[8:])) == nbd.OptExportName {
		c.mu.Lock()
		c.exportNameSent = true
		c.mu.Unlock()
	}
	return c.forward(h[:nbd.OptionHeaderBytes], int64(be.Uint32(h[12:])))
}

// request forwards, holds or duplicates a request whose first 4 bytes are
// in h.
func (c *proxyConn) request(h []byte) error {
	p := c.p
	if err := c.readClient(h[4:nbd.RequestHeaderBytes]); err != nil {
		return err
	}
	var req nbd.Request
	if err := nbd.DecodeRequest(h, &req); err != nil {
		panic(err) // the magic was checked
	}
	p.st.request(req.Cmd)
	p.event()
	if req.Cmd == nbd.CmdDisc {
		// The disconnect must not overtake requests held back.
		if err := c.waitHeld(); err != nil {
			return err
		}
		return c.forward(h, 0)
	}
	var payload int64
	if req.Cmd == nbd.CmdWrite {
		payload = int64(req.Length)
	}
	rule := p.matchHold(req)
	dup := matches(&p.dup, req)
	if (rule != nil || dup) && payload > p.opts.MaxPayloadBytes {
		p.st.holdOverflows.Add(1)
		rule, dup = nil, false
	}
	if err := c.track(req, dup); err != nil {
		return err
	}
	if rule == nil && !dup {
		return c.forward(h, payload)
	}
	buf := make([]byte, nbd.RequestHeaderBytes+payload)
	copy(buf, h)
	if err := c.readClient(buf[nbd.RequestHeaderBytes:]); err != nil {
		return err
	}
	if rule != nil {
		switch p.hold(rule, &heldFrame{c: c, buf: buf, dup: dup}) {
		case holdKept:
			p.st.held.Add(1)
			p.event()
			return nil
		case holdDead:
			return errKilled
		case holdOverflow:
			p.st.holdOverflows.Add(1)
		case holdReleased:
		}
	}
	return c.sendBuffered(buf, dup)
}

// track remembers req until its reply ended, so the reply's framing is
// known and its duplicates can be swallowed.
func (c *proxyConn) track(req nbd.Request, dup bool) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.flights[req.Cookie]; !ok && len(c.flights) >= c.p.opts.MaxInFlight {
		return fmt.Errorf("%w: more than %d requests in flight on one connection", errLimit, c.p.opts.MaxInFlight)
	}
	f := flight{req: req}
	if dup {
		f.extra = 1
	}
	c.flights[req.Cookie] = f
	return nil
}

// unparsed gives up parsing the connection: its held requests are dropped.
func (c *proxyConn) unparsed() {
	if c.rawCounted.CompareAndSwap(false, true) {
		c.p.st.unparsed.Add(1)
		c.p.log.Debug("proxy: forwarding byte for byte", "conn", c.id)
		c.p.event()
	}
}

// rawToServer forwards prefix and then everything the client sends.
func (c *proxyConn) rawToServer(prefix []byte) error {
	c.unparsed()
	c.p.dropHeld(c)
	if err := c.forward(prefix, 0); err != nil {
		return err
	}
	for {
		n, err := c.cr.Read(c.cbuf[:])
		if n > 0 {
			if werr := c.forward(c.cbuf[:n], 0); werr != nil {
				return werr
			}
		}
		if err != nil {
			return fmt.Errorf("%w: %w", errClient, err)
		}
	}
}

// s2cLoop runs the server->client pump until the server side ends.
func (c *proxyConn) s2cLoop() error {
	h := c.shdr[:]
	if err := c.readServer(h[:16]); err != nil {
		return err
	}
	if be.Uint64(h) != nbd.MagicNBD {
		return c.rawToClient(h[:16])
	}
	switch be.Uint64(h[8:]) {
	case nbd.MagicOption:
		if err := c.readServer(h[16:18]); err != nil {
			return err
		}
		if err := c.toClientFrame(h[:18], 0, false); err != nil {
			return err
		}
		if err := c.optionReplies(); err != nil {
			return err
		}
	case nbd.MagicOldstyle:
		if err := c.toClientFrame(h[:16], nbd.OldstyleRestBytes, false); err != nil {
			return err
		}
	default:
		return c.rawToClient(h[:16])
	}
	for {
		if err := c.readServer(h[:4]); err != nil {
			return err
		}
		var err error
		switch be.Uint32(h) {
		case nbd.MagicSimpleReply:
			err = c.reply(h[:nbd.SimpleReplyBytes])
		case nbd.MagicStructuredReply:
			err = c.reply(h[:nbd.StructuredReplyBytes])
		default:
			err = c.rawToClient(h[:4])
		}
		if err != nil {
			return err
		}
	}
}

// optionReplies forwards the handshake replies until the transmission
// phase starts.
func (c *proxyConn) optionReplies() error {
	h := c.shdr[:]
	for {
		if err := c.readServer(h[:8]); err != nil {
			return err
		}
		if be.Uint64(h) != nbd.MagicOptionReply {
			// The reply to NBD_OPT_EXPORT_NAME has no magic: size, flags
			// and, unless the client asked for none, zeroes.
			c.mu.Lock()
			exportName, noZeroes := c.exportNameSent, c.noZeroes
			c.mu.Unlock()
			if !exportName {
				return c.rawToClient(h[:8])
			}
			rest := int64(nbd.ExportNameReplyBytes - 8) // after the 8-byte size: the flags
			if !noZeroes {
				rest += nbd.ExportNameZeroesBytes
			}
			return c.toClientFrame(h[:8], rest, false)
		}
		if err := c.readServer(h[8:nbd.OptionReplyBytes]); err != nil {
			return err
		}
		opt, typ := nbd.Option(be.Uint32(h[8:])), nbd.ReplyType(be.Uint32(h[12:]))
		if err := c.toClientFrame(h[:nbd.OptionReplyBytes], int64(be.Uint32(h[16:])), false); err != nil {
			return err
		}
		switch {
		case opt == nbd.OptGo && typ == nbd.RepAck:
			return nil
		case opt == nbd.OptStartTLS && typ == nbd.RepAck,
			opt == nbd.OptExtendedHeaders && typ == nbd.RepAck:
			return c.rawToClient(nil)
		}
	}
}

// reply forwards, swallows or deduplicates one simple reply or structured
// chunk whose first 4 bytes are in h.
func (c *proxyConn) reply(h []byte) error {
	p := c.p
	if err := c.readServer(h[4:]); err != nil {
		return err
	}
	var rep nbd.Reply
	if err := nbd.DecodeReply(h, &rep); err != nil {
		panic(err) // the magic was checked
	}
	done := !rep.Structured || rep.Flags&nbd.ChunkFlagDone != 0
	if rep.Structured {
		p.st.chunks.Add(1)
	}
	if done {
		p.st.replies.Add(1)
	}
	c.mu.Lock()
	f, ok := c.flights[rep.Cookie]
	c.mu.Unlock()
	payload := int64(rep.Length)
	if !rep.Structured {
		if !ok { // the payload's length is unknown: framing is lost
			return c.rawToClient(h)
		}
		payload = 0
		if f.req.Cmd == nbd.CmdRead && rep.Errno == 0 {
			payload = int64(f.req.Length)
		}
	}
	if !ok { // a chunk of a request the proxy did not see: pass it on
		return c.toClientFrame(h, payload, false)
	}
	duplicate := f.answered
	if !duplicate && !f.decided {
		f.decided, f.drop = true, matches(&p.drop, f.req)
	}
	if done {
		if duplicate {
			f.extra--
		}
		f.answered = true
	}
	c.mu.Lock()
	if f.answered && f.extra <= 0 {
		delete(c.flights, rep.Cookie)
	} else {
		c.flights[rep.Cookie] = f
	}
	c.mu.Unlock()
	switch {
	case duplicate && done:
		p.st.duplicateReplies.Add(1)
		p.event()
	case f.drop && done:
		p.st.repliesDropped.Add(1)
		p.event()
	case done:
		p.event()
	}
	return c.toClientFrame(h, payload, duplicate || f.drop)
}

// rawToClient forwards prefix and then everything the server sends.
func (c *proxyConn) rawToClient(prefix []byte) error {
	c.unparsed()
	if err := c.toClientFrame(prefix, 0, false); err != nil {
		return err
	}
	for {
		n, err := c.sr.Read(c.sbuf[:])
		if n > 0 {
			if gerr := c.toClientFrame(c.sbuf[:n], 0, false); gerr != nil {
				return gerr
			}
		}
		if err != nil {
			return err
		}
	}
}
