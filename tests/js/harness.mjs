// Starts the real abs-socket binary on 127.0.0.1 and connects real socket.io-client sockets to it.
import { spawn } from 'node:child_process'
import { createHmac, randomUUID } from 'node:crypto'
import { copyFileSync, mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { io } from 'socket.io-client'

const here = dirname(fileURLToPath(import.meta.url))
export const repo = join(here, '..', '..')
export const fixtureDir = join(repo, '..', 'shared', 'fixtures', 'abs-2.36')
export const fixture = JSON.parse(readFileSync(join(fixtureDir, 'tokens.json'), 'utf8'))
export const bin = process.env.ABS_SOCKET_BIN || join(repo, 'target', 'debug', 'abs-socket')

/** The fixture token with this label (e.g. `legacy_tom`, `apikey_admin_active`). */
export function token(label) {
  const t = fixture.tokens.find((t) => t.label === label)
  if (!t) throw new Error(`no fixture token ${label}`)
  return t.jwt
}

export function user(name) {
  return fixture.users.find((u) => u.username === name)
}

const b64 = (v) => Buffer.from(typeof v === 'string' ? v : JSON.stringify(v)).toString('base64url')

/** Signs claims with HS256 over the UTF-8 bytes of `secret`, as audiobookshelf does. */
export function sign(claims, secret = fixture.jwtSecret, alg = 'HS256') {
  const head = `${b64({ alg, typ: 'JWT' })}.${b64(claims)}`
  const hash = { HS256: 'sha256', HS384: 'sha384', HS512: 'sha512' }[alg]
  return `${head}.${createHmac(hash, secret).update(head).digest('base64url')}`
}

/** A fresh access token for a fixture user, like audiobookshelf's login returns. */
export function accessToken(name, { lifetime = 3600, secret } = {}) {
  const u = user(name)
  const iat = Math.floor(Date.now() / 1000)
  return sign({ userId: u.id, username: u.username, jti: randomUUID(), type: 'access', iat, exp: iat + lifetime }, secret)
}

export async function freePort() {
  return new Promise((resolve, reject) => {
    const srv = createServer()
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address()
      srv.close(() => resolve(port))
    })
    srv.on('error', reject)
  })
}

/**
 * Starts abs-socket on a copy of the fixture database (or on `dbPath`, or a fresh file when
 * `fresh`), waits until /healthz answers, and returns { url, port, stop, log, dir }.
 */
export async function startServer({ fresh = false, env = {}, args = [] } = {}) {
  const dir = mkdtempSync(join(tmpdir(), 'abs-socket-js-'))
  const port = await freePort()
  const dbArgs = []
  if (!fresh) {
    copyFileSync(join(fixtureDir, 'absdatabase.sqlite'), join(dir, 'absdatabase.sqlite'))
    dbArgs.push('--database', join(dir, 'absdatabase.sqlite'))
  }
  const child = spawn(bin, [...dbArgs, 'serve', '--host', '127.0.0.1', '--port', String(port), ...args], {
    cwd: dir,
    env: { ...process.env, CONFIG_PATH: dir, RUST_LOG: process.env.RUST_LOG || 'info', ...env },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  let log = ''
  child.stdout.on('data', (d) => (log += d))
  child.stderr.on('data', (d) => (log += d))
  const exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })))
  const url = `http://127.0.0.1:${port}`
  const deadline = Date.now() + 30000
  for (;;) {
    if (child.exitCode !== null) throw new Error(`abs-socket exited early:\n${log}`)
    try {
      const res = await fetch(`${url}/healthz`)
      if (res.ok) break
    } catch {}
    if (Date.now() > deadline) throw new Error(`abs-socket did not start:\n${log}`)
    await new Promise((r) => setTimeout(r, 50))
  }
  return {
    url,
    port,
    dir,
    log: () => log,
    exited,
    async stop(signal = 'SIGTERM') {
      if (child.exitCode === null) child.kill(signal)
      const res = await exited
      rmSync(dir, { recursive: true, force: true })
      return res
    }
  }
}

/** Connects as the audiobookshelf web app does: websocket only, no upgrade. */
export function webClient(url, path = '/audiobookshelf/socket.io', opts = {}) {
  return record(io(url, { path, transports: ['websocket'], upgrade: false, reconnection: false, forceNew: true, ...opts }))
}

/** Connects as the React client and python scripts do: polling first, then upgrade. */
export function pollingClient(url, path = '/socket.io', opts = {}) {
  return record(io(url, { path, transports: ['polling', 'websocket'], reconnection: false, forceNew: true, ...opts }))
}

/** Adds `events` (every event received, in order) and `next(name)` (await the next one). */
function record(socket) {
  socket.events = []
  const waiters = []
  socket.onAny((event, ...args) => {
    socket.events.push({ event, args })
    for (const w of waiters.slice()) {
      if (w.event === event) {
        waiters.splice(waiters.indexOf(w), 1)
        w.resolve(args[0])
      }
    }
  })
  socket.received = (event) => socket.events.filter((e) => e.event === event).map((e) => e.args[0])
  // The next `event` after this call, or one already received and not yet consumed.
  socket.consumed = {}
  socket.next = (event, timeout = 5000) => {
    const seen = socket.received(event)
    const used = socket.consumed[event] || 0
    if (seen.length > used) {
      socket.consumed[event] = used + 1
      return Promise.resolve(seen[used])
    }
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no ${event} within ${timeout} ms; got ${JSON.stringify(socket.events.map((e) => e.event))}`)), timeout)
      waiters.push({
        event,
        resolve: (v) => {
          clearTimeout(timer)
          socket.consumed[event] = (socket.consumed[event] || 0) + 1
          resolve(v)
        }
      })
    })
  }
  socket.connected$ = new Promise((resolve, reject) => {
    socket.once('connect', resolve)
    socket.once('connect_error', reject)
  })
  return socket
}

/** Connects and authenticates the way every audiobookshelf client does; resolves with `init`. */
export async function authed(socket, tok) {
  if (socket.connected) socket.emit('auth', tok)
  else socket.on('connect', () => socket.emit('auth', tok))
  await socket.connected$
  return socket.next('init')
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms))
