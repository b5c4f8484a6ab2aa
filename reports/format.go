package reports

import (
	"fmt"
	"strings"
	"time"
)

// formatDuration prints a duration for a table cell: µs, ms or seconds with
// two decimals below a minute, whole seconds above.
func formatDuration(d time.Duration) string {
	switch {
	case d < 0:
		return "-" + formatDuration(-d)
	case d == 0:
		return "0"
	case d < time.Millisecond:
		return fmt.Sprintf("%dµs", d.Microseconds())
	case d < time.Second:
		return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond))
	case d < time.Minute:
		return fmt.Sprintf("%.2fs", d.Seconds())
	}
	return d.Round(time.Second).String()
}

// formatWall prints a wall-clock time in UTC, or "—" when unset.
func formatWall(t time.Time) string {
	if t.IsZero() {
		return "—"
	}
	return t.UTC().Format("2006-01-02 15:04:05 UTC")
}

// formatOffsetFrom prints t as +h:mm:ss since origin, or "—" when unset.
func formatOffsetFrom(origin, t time.Time) string {
	if t.IsZero() || origin.IsZero() {
		return "—"
	}
	d := t.Sub(origin)
	sign := "+"
	if d < 0 {
		sign, d = "-", -d
	}
	d = d.Round(time.Second)
	return fmt.Sprintf("%s%d:%02d:%02d", sign, int64(d.Hours()), int64(d.Minutes())%60, int64(d.Seconds())%60)
}

// excerpt bounds a text to ExcerptMaxBytes of valid UTF-8, keeping the
// head and the larger tail (where tool output says what went wrong).
func excerpt(s string) string { return excerptN(s, ExcerptMaxBytes) }

func excerptN(s string, limit int) string {
	if len(s) > limit {
		head := limit / 4
		tail := limit - head
		s = fmt.Sprintf("%s\n… %d bytes cut …\n%s", s[:head], len(s)-head-tail, s[len(s)-tail:])
	}
	return strings.ToValidUTF8(s, "\uFFFD")
}

// firstLineMaxBytes bounds firstLine: a JUnit message attribute, a headline.
const firstLineMaxBytes = 512

// firstLine is the first line of s, bounded to firstLineMaxBytes and made
// valid UTF-8.
func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	if len(s) > firstLineMaxBytes {
		s = s[:firstLineMaxBytes] + "…"
	}
	return strings.ToValidUTF8(s, "\uFFFD")
}
