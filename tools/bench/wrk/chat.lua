-- wrk script for tools/bench/proxy.py: POST a small non-streaming chat completion, and print
-- the figures at the end as one JSON line (latency in microseconds, from wrk's histogram).
wrk.method = "POST"
wrk.path = "/v1/chat/completions"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-bench-0000000000000000"
wrk.body = '{"model":"gpt-4o","messages":[{"role":"system","content":"You are a terse assistant."},'
  .. '{"role":"user","content":"Say hello to the benchmark in five words."}],"temperature":0.2}'

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,'
      .. '"status":%d,"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"mean_us":%.1f,'
      .. '"min_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean,
    latency.min, latency.max))
end
