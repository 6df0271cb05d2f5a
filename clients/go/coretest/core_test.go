// Package coretest runs the generated Go stubs against a real LLMTrace core process.
//
// The core binary is $LLMTRACE_BIN when set, else the repository's ../../../.venv/bin/llmtrace.
// The test is skipped, saying why, only when neither exists.
package coretest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	llmtracev1 "github.com/llmtrace/llmtrace/clients/go/llmtrace/api/v1"
)

const (
	readyTimeout    = 60 * time.Second
	shutdownTimeout = 30 * time.Second
	tenant          = "go-client"
)

// readyFile is what `llmtrace core --ready-file` writes once serving.
type readyFile struct {
	GRPC    string  `json:"grpc"`
	Metrics *string `json:"metrics"`
	PID     int     `json:"pid"`
}

// coreBinary finds the llmtrace executable, or skips the test.
func coreBinary(t *testing.T) string {
	t.Helper()
	if bin := os.Getenv("LLMTRACE_BIN"); bin != "" {
		if _, err := os.Stat(bin); err != nil {
			t.Fatalf("LLMTRACE_BIN=%s: %v", bin, err)
		}
		return bin
	}
	bin, err := filepath.Abs(filepath.Join("..", "..", "..", ".venv", "bin", "llmtrace"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(bin); err != nil {
		t.Skipf("no llmtrace core to test against: set LLMTRACE_BIN or create the repository's .venv (%s: %v)", bin, err)
	}
	return bin
}

// lockedBuffer collects the core's output; written by exec's copier, read by the test.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// runningCore is a started `llmtrace core` process.
type runningCore struct {
	cmd    *exec.Cmd
	exited chan error // receives cmd.Wait's result once
	ready  readyFile
	logs   *lockedBuffer
}

// startCore runs `llmtrace core` on free ports with a fresh database and waits until it serves.
func startCore(t *testing.T) *runningCore {
	t.Helper()
	bin := coreBinary(t)
	dir := t.TempDir()
	config := filepath.Join(dir, "llmtrace.yaml")
	ready := filepath.Join(dir, "ready.json")
	yaml := fmt.Sprintf(`grpc:
  listen_addr: "127.0.0.1:0"
metrics:
  listen_addr: "127.0.0.1:0"
storage:
  database_path: %q
shutdown:
  timeout_seconds: 10
`, filepath.Join(dir, "llmtrace.duckdb"))
	if err := os.WriteFile(config, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}

	core := &runningCore{exited: make(chan error, 1), logs: &lockedBuffer{}}
	core.cmd = exec.Command(bin, "core", "--config", config, "--ready-file", ready)
	core.cmd.Dir = dir
	core.cmd.Stdout = core.logs
	core.cmd.Stderr = core.logs
	core.cmd.Env = withoutLLMTraceVars(os.Environ())
	if err := core.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}
	done := make(chan struct{})
	go func() {
		err := core.cmd.Wait()
		close(done)
		core.exited <- err
	}()
	t.Cleanup(func() {
		select {
		case <-done:
		default:
			_ = core.cmd.Process.Kill()
			<-done
		}
	})

	deadline := time.Now().Add(readyTimeout)
	for {
		data, err := os.ReadFile(ready)
		if err == nil {
			if err := json.Unmarshal(data, &core.ready); err != nil {
				t.Fatalf("ready file %s: %v: %q", ready, err, data)
			}
			if core.ready.PID != core.cmd.Process.Pid {
				t.Fatalf("ready file pid %d, started %d", core.ready.PID, core.cmd.Process.Pid)
			}
			return core
		}
		select {
		case err := <-core.exited:
			t.Fatalf("core exited before it was ready: %v\n%s", err, core.logs.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("core not ready after %s\n%s", readyTimeout, core.logs.String())
		}
	}
}

// stop sends SIGTERM and fails the test unless the core exits 0 in time.
func (c *runningCore) stop(t *testing.T) {
	t.Helper()
	if err := c.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-c.exited:
		if err != nil {
			t.Fatalf("core after SIGTERM: %v (want exit status 0)\n%s", err, c.logs.String())
		}
	case <-time.After(shutdownTimeout):
		t.Fatalf("core still running %s after SIGTERM\n%s", shutdownTimeout, c.logs.String())
	}
}

func withoutLLMTraceVars(env []string) []string {
	out := env[:0:0]
	for _, kv := range env {
		if len(kv) >= 9 && kv[:9] == "LLMTRACE_" {
			continue
		}
		out = append(out, kv)
	}
	return out
}

func randomBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func span(t *testing.T, model string, inputTokens int64, start time.Time) *llmtracev1.Span {
	t.Helper()
	return &llmtracev1.Span{
		TraceId:          randomBytes(t, 16),
		SpanId:           randomBytes(t, 8),
		Tenant:           tenant,
		Agent:            "go-test",
		Operation:        "chat",
		Provider:         "openai",
		RequestModel:     model,
		ResponseModel:    model,
		Name:             "chat " + model,
		StartTime:        timestamppb.New(start),
		EndTime:          timestamppb.New(start.Add(250 * time.Millisecond)),
		TimeToFirstToken: durationpb.New(40 * time.Millisecond),
		Status: &llmtracev1.SpanStatus{
			Code:           llmtracev1.StatusCode_STATUS_CODE_OK,
			HttpStatusCode: 200,
		},
		Request: &llmtracev1.LlmRequest{
			Messages: []*llmtracev1.Message{{
				Role: "user",
				Parts: []*llmtracev1.ContentPart{{
					Type: llmtracev1.ContentPartType_CONTENT_PART_TYPE_TEXT,
					Text: "Hello from Go",
				}},
			}},
		},
		Usage: &llmtracev1.Usage{InputTokens: inputTokens, OutputTokens: 5},
		Attributes: []*llmtracev1.KeyValue{{
			Key:   "client.language",
			Value: &llmtracev1.AnyValue{Value: &llmtracev1.AnyValue_StringValue{StringValue: "go"}},
		}},
	}
}

func TestCoreWithGeneratedStubs(t *testing.T) {
	core := startCore(t)

	conn, err := grpc.NewClient(core.ready.GRPC, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	health, err := grpc_health_v1.NewHealthClient(conn).Check(ctx, &grpc_health_v1.HealthCheckRequest{
		Service: "llmtrace.api.v1.IngestService",
	})
	if err != nil {
		t.Fatalf("health check: %v", err)
	}
	if health.GetStatus() != grpc_health_v1.HealthCheckResponse_SERVING {
		t.Fatalf("health status %v, want SERVING", health.GetStatus())
	}

	// Two valid spans and one without a tenant: the valid ones are stored, the other reported.
	start := time.Now().Add(-time.Minute).Truncate(time.Microsecond)
	first := span(t, "gpt-4o", 100, start)
	second := span(t, "gpt-4o-mini", 10, start.Add(time.Second))
	invalid := span(t, "gpt-4o", 1, start)
	invalid.Tenant = ""
	ingest := llmtracev1.NewIngestServiceClient(conn)
	resp, err := ingest.IngestSpans(ctx, &llmtracev1.IngestSpansRequest{
		Spans: []*llmtracev1.Span{first, invalid, second},
	})
	if err != nil {
		t.Fatalf("IngestSpans: %v", err)
	}
	if resp.GetAcceptedSpans() != 2 {
		t.Errorf("accepted_spans = %d, want 2", resp.GetAcceptedSpans())
	}
	partial := resp.GetPartialSuccess()
	if partial.GetRejectedSpans() != 1 || len(partial.GetRejections()) != 1 {
		t.Fatalf("partial_success = %v, want one rejection", partial)
	}
	rejection := partial.GetRejections()[0]
	if rejection.GetIndex() != 1 || !bytes.Equal(rejection.GetSpanId(), invalid.GetSpanId()) {
		t.Errorf("rejection = %v, want index 1 with the invalid span's id", rejection)
	}
	if len(rejection.GetViolations()) == 0 || rejection.GetViolations()[0].GetField() != "spans[1].tenant" {
		t.Errorf("violations = %v, want spans[1].tenant", rejection.GetViolations())
	}

	query := llmtracev1.NewQueryServiceClient(conn)
	list, err := query.ListSpans(ctx, &llmtracev1.ListSpansRequest{
		Tenant: tenant,
		Filter: `request_model = "gpt-4o" AND input_tokens > 50`,
	})
	if err != nil {
		t.Fatalf("ListSpans: %v", err)
	}
	if len(list.GetSpans()) != 1 || !bytes.Equal(list.GetSpans()[0].GetSpanId(), first.GetSpanId()) {
		t.Fatalf("ListSpans with filter returned %d spans, want only the first", len(list.GetSpans()))
	}
	if list.GetNextPageToken() != "" {
		t.Errorf("next_page_token = %q, want empty", list.GetNextPageToken())
	}
	all, err := query.ListSpans(ctx, &llmtracev1.ListSpansRequest{Tenant: tenant})
	if err != nil {
		t.Fatalf("ListSpans: %v", err)
	}
	if len(all.GetSpans()) != 2 {
		t.Errorf("ListSpans without filter returned %d spans, want 2", len(all.GetSpans()))
	}

	got, err := query.GetSpan(ctx, &llmtracev1.GetSpanRequest{Tenant: tenant, SpanId: second.GetSpanId()})
	if err != nil {
		t.Fatalf("GetSpan: %v", err)
	}
	s := got.GetSpan()
	if !bytes.Equal(s.GetTraceId(), second.GetTraceId()) || s.GetRequestModel() != "gpt-4o-mini" {
		t.Errorf("GetSpan returned trace %x model %q", s.GetTraceId(), s.GetRequestModel())
	}
	if !s.GetStartTime().AsTime().Equal(second.GetStartTime().AsTime()) {
		t.Errorf("start_time = %v, want %v", s.GetStartTime().AsTime(), second.GetStartTime().AsTime())
	}
	if text := s.GetRequest().GetMessages()[0].GetParts()[0].GetText(); text != "Hello from Go" {
		t.Errorf("message text = %q", text)
	}
	if attrs := s.GetAttributes(); len(attrs) != 1 || attrs[0].GetValue().GetStringValue() != "go" {
		t.Errorf("attributes = %v", attrs)
	}

	stats, err := query.GetStats(ctx, &llmtracev1.GetStatsRequest{Tenant: tenant})
	if err != nil {
		t.Fatalf("GetStats: %v", err)
	}
	total := stats.GetTotal()
	if total.GetSpanCount() != 2 || total.GetTraceCount() != 2 || total.GetInputTokens() != 110 {
		t.Errorf("stats total = %v, want 2 spans, 2 traces, 110 input tokens", total)
	}
	if total.GetErrorCount() != 0 || total.GetLatencyP50().AsDuration() != 250*time.Millisecond {
		t.Errorf("stats total = %v, want no errors and p50 latency 250ms", total)
	}

	// SIGTERM: a graceful stop, exit status 0.
	core.stop(t)
}
