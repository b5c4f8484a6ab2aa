// Package reports renders the results of a torture run for the person who
// reads them in the morning and for CI.
//
// The torture runner fills a [Run] and calls [Write], which produces, in one
// directory:
//
//   - report.html: one self-contained page (inline CSS and SVG, no network)
//     with the result, the counters, throughput and latency charts with the
//     fault windows shaded, and tables of faults, cycles, failures, resyncs
//     and checks;
//   - summary.json: the Run as JSON with stable snake_case names (see
//     [Summary]); the sample series is downsampled to at most
//     [SummarySamplesMax] points;
//   - junit.xml: one testsuite for the run, one testcase per cycle phase and
//     per run-level check (see [WriteJUnit]).
//
// During the run, [EventLog] writes events.jsonl live, one JSON object per
// line; [ScanEvents] and [ReadEvents] parse it back.
//
// Every renderer is bounded: long texts are cut to an excerpt, the sample
// series is downsampled, and the tables keep every failed row but cap the
// passing ones, so an overnight run gives a page a browser opens quickly.
package reports
