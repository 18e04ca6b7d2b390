package node_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/sds-injector/sds-injector/test/node"
	"github.com/sds-injector/sds-injector/test/node/checkreport"
)

// TestCheckerEventsReadTheReport: what gateway-checker writes
// (checkreport.Prefix and a checkreport.Line as JSON) is what CheckerEvents
// reads, with the runtime's time of the line; other lines are passed over.
func TestCheckerEventsReadTheReport(t *testing.T) {
	present := false
	want := checkreport.Line{Event: "start", Time: time.Unix(100, 5).UTC(), UID: 101, Groups: []int{1, 2}, PresentAtStart: &present}
	b, err := json.Marshal(want)
	if err != nil {
		t.Fatal(err)
	}
	at := time.Unix(200, 7).UTC()
	evs, err := node.CheckerEvents([]node.LogLine{{Time: at, Text: "not a report line"}, {Time: at, Text: checkreport.Prefix + string(b)}})
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 1 {
		t.Fatalf("%d events, want 1: %+v", len(evs), evs)
	}
	got := evs[0]
	if got.Event != want.Event || !got.Time.Equal(want.Time) || got.UID != 101 || len(got.Groups) != 2 ||
		got.PresentAtStart == nil || *got.PresentAtStart || !got.LogTime.Equal(at) {
		t.Fatalf("read %+v (log time %s), want %+v at %s", got.Line, got.LogTime, want, at)
	}
	if _, err := node.CheckerEvents([]node.LogLine{{Text: checkreport.Prefix + "{"}}); err == nil {
		t.Fatal("a broken report line was accepted")
	}
}
