"""The Lua scripts of the job store: each one is one atomic step of a job's life, so
that no interleaving of API requests, workers and redeliveries can break the
guarantees listed in `core.jobstore`."""

_PRUNED_PENDING_SUM = """
local pending = 0
local entries = redis.call('HGETALL', pkey)
for i = 1, #entries, 2 do
  -- a job that expired or vanished mid-flight must not hold queue capacity forever
  if redis.call('EXISTS', ARGV[1] .. entries[i]) == 1 then
    pending = pending + tonumber(entries[i + 1])
  else
    redis.call('HDEL', pkey, entries[i])
  end
end
"""

# KEYS: meta, pending  ARGV: job key prefix, job id, total, n_chunks, max pending, pending ttl, request digest
COMMIT = (
    """
if redis.call('HGET', KEYS[1], 'status') ~= 'staging' then return {-1, 0} end
local pkey = KEYS[2]
"""
    + _PRUNED_PENDING_SUM
    + """
local total = tonumber(ARGV[3])
if pending + total > tonumber(ARGV[5]) then return {0, pending} end
redis.call('HSET', KEYS[1], 'status', 'queued', 'total', ARGV[3], 'n_chunks', ARGV[4], 'request_digest', ARGV[7])
redis.call('HSET', KEYS[2], ARGV[2], total)
redis.call('EXPIRE', KEYS[2], ARGV[6])
return {1, pending + total}
"""
)

# KEYS: pending  ARGV: job key prefix
PENDING_SUM = "local pkey = KEYS[1]\n" + _PRUNED_PENDING_SUM + "return pending\n"

# KEYS: meta, in:i, out:i, tries  ARGV: chunk index, now, max deliveries
BEGIN = """
local st = redis.call('HGET', KEYS[1], 'status')
if (not st) or st == 'staging' then return {'gone'} end
if st == 'succeeded' or st == 'failed' or st == 'cancelled' then return {st} end
if redis.call('EXISTS', KEYS[3]) == 1 then return {'done'} end
local exp = redis.call('HGET', KEYS[1], 'expires_at')
local tries = redis.call('HINCRBY', KEYS[4], ARGV[1], 1)
redis.call('EXPIREAT', KEYS[4], exp)
if tries > tonumber(ARGV[3]) then return {'poison', tostring(tries)} end
local blob = redis.call('GET', KEYS[2])
if not blob then return {'missing'} end
if st == 'queued' then redis.call('HSET', KEYS[1], 'status', 'running', 'started_at', ARGV[2]) end
local m = redis.call('HMGET', KEYS[1], 'model', 'target_domain', 'options')
return {'run', blob, m[1], m[2], m[3], tostring(tries)}
"""

# KEYS: meta, in:i, out:i, rb:i, pending
# ARGV: job id, sequences, kept, replaced, discarded, now, out blob, recbole blob
COMPLETE = """
local st = redis.call('HGET', KEYS[1], 'status')
if (not st) or st == 'staging' then return {'gone'} end
if redis.call('EXISTS', KEYS[3]) == 1 then return {'duplicate'} end
if st ~= 'queued' and st ~= 'running' then
  redis.call('DEL', KEYS[2])
  return {st}
end
local exp = redis.call('HGET', KEYS[1], 'expires_at')
redis.call('SET', KEYS[3], ARGV[7], 'EXAT', exp)
redis.call('SET', KEYS[4], ARGV[8], 'EXAT', exp)
redis.call('DEL', KEYS[2])
local n = tonumber(ARGV[2])
redis.call('HINCRBY', KEYS[1], 'done', n)
redis.call('HINCRBY', KEYS[1], 'kept', ARGV[3])
redis.call('HINCRBY', KEYS[1], 'replaced', ARGV[4])
redis.call('HINCRBY', KEYS[1], 'discarded', ARGV[5])
local chunks = redis.call('HINCRBY', KEYS[1], 'chunks_done', 1)
if redis.call('HINCRBY', KEYS[5], ARGV[1], -n) <= 0 then redis.call('HDEL', KEYS[5], ARGV[1]) end
if chunks >= tonumber(redis.call('HGET', KEYS[1], 'n_chunks')) then
  redis.call('HSET', KEYS[1], 'status', 'succeeded', 'finished_at', ARGV[6])
  redis.call('HDEL', KEYS[5], ARGV[1])
  return {'succeeded', redis.call('HGET', KEYS[1], 'created_at')}
end
return {'stored'}
"""

# KEYS: meta, pending  ARGV: job id, new status, now, error JSON or '', job key (J)
# returns {status}: the job's final status, or {new status, created_at} from the call that set it
FINISH = """
local st = redis.call('HGET', KEYS[1], 'status')
if (not st) or st == 'staging' then return {'gone'} end
if st == 'succeeded' or st == 'failed' or st == 'cancelled' then return {st} end
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'finished_at', ARGV[3])
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'error', ARGV[4]) end
redis.call('HDEL', KEYS[2], ARGV[1])
-- results of a job that will never succeed are never served: free the memory now
local n = tonumber(redis.call('HGET', KEYS[1], 'n_chunks') or '0')
for i = 0, n - 1 do
  redis.call('DEL', ARGV[5] .. ':in:' .. i, ARGV[5] .. ':out:' .. i, ARGV[5] .. ':rb:' .. i)
end
return {ARGV[2], redis.call('HGET', KEYS[1], 'created_at')}
"""

# KEYS: idempotency key  ARGV: job id
RELEASE_IF_OWNED = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
