// 2,000 sockets connect at once and emit `auth` the instant `connect` fires, as the apps do.
// Counts, not time: every one must get `init`.
import assert from 'node:assert/strict'
import { after, before, test } from 'node:test'
import { io } from 'socket.io-client'
import { startServer, token } from './harness.mjs'

const N = Number(process.env.LOAD_SOCKETS || 2000)
let srv
before(async () => (srv = await startServer({ env: { RUST_LOG: 'warn' } })))
after(async () => assert.equal((await srv.stop()).code, 0))

test(`${N} sockets authenticate at once and none is lost`, { timeout: 180000 }, async () => {
  const tokens = ['legacy_tom', 'legacy_sara', 'legacy_lena', 'apikey_tom_active'].map(token)
  const admins = [token('legacy_admin'), token('apikey_admin_active')]
  const sockets = []
  let inits = 0
  let failures = 0
  const done = new Promise((resolve) => {
    for (let i = 0; i < N; i++) {
      const tok = i % 200 === 0 ? admins[(i / 200) % 2] : tokens[i % tokens.length]
      const s = io(srv.url, {
        path: i % 2 ? '/socket.io' : '/audiobookshelf/socket.io',
        transports: ['websocket'],
        upgrade: false,
        reconnection: false,
        forceNew: true,
        timeout: 120000
      })
      s.on('connect', () => s.emit('auth', tok))
      s.once('init', () => {
        if (++inits + failures === N) resolve()
      })
      const fail = () => {
        if (inits + ++failures === N) resolve()
      }
      s.once('auth_failed', fail)
      s.once('connect_error', fail)
      sockets.push(s)
    }
  })
  let timer
  const timeout = new Promise((resolve) => (timer = setTimeout(resolve, 150000)))
  const t0 = Date.now()
  await Promise.race([done, timeout])
  clearTimeout(timer)
  console.log(`${inits} init in ${Date.now() - t0} ms`)
  const connected = sockets.filter((s) => s.connected).length
  for (const s of sockets) s.disconnect()
  assert.equal(failures, 0, 'no auth_failed and no connect_error')
  assert.equal(connected, N, 'every socket stayed connected')
  assert.equal(inits, N, 'every socket got init')
})
