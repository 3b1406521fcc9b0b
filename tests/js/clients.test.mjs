// The audiobookshelf apps' own client library, connected the ways the apps connect.
import assert from 'node:assert/strict'
import { after, before, test } from 'node:test'
import { accessToken, authed, pollingClient, sleep, startServer, token, user, webClient } from './harness.mjs'

let srv
const open = []
const track = (s) => (open.push(s), s)
before(async () => (srv = await startServer()))
after(async () => {
  for (const s of open) s.disconnect()
  assert.equal((await srv.stop()).code, 0, 'SIGTERM: exit 0')
})

test('the web app: websocket only, no upgrade, on /audiobookshelf/socket.io', async () => {
  const s = track(webClient(srv.url))
  const init = await authed(s, token('legacy_tom'))
  assert.deepEqual(init, { userId: user('tom').id, username: 'tom' })
  assert.equal(s.io.engine.transport.name, 'websocket')
})

test('polling then upgrade on /socket.io', async () => {
  const s = track(pollingClient(srv.url))
  const init = await authed(s, accessToken('sara'))
  assert.deepEqual(init, { userId: user('sara').id, username: 'sara' })
  for (let i = 0; i < 100 && s.io.engine.transport.name !== 'websocket'; i++) await sleep(50)
  assert.equal(s.io.engine.transport.name, 'websocket', 'upgraded')
  s.emit('ping')
  assert.equal(await s.next('pong'), undefined)
})

test('the mobile app path //socket.io is accepted', async () => {
  const s = track(webClient(srv.url, '//socket.io'))
  assert.equal((await authed(s, token('legacy_lena'))).username, 'lena')
})

test('usersOnline counts both sockets of one user, across both paths', async () => {
  const a = track(webClient(srv.url, '/socket.io'))
  const b = track(webClient(srv.url, '/audiobookshelf/socket.io'))
  await authed(a, token('legacy_maria'))
  await authed(b, token('legacy_maria'))
  const c = track(webClient(srv.url))
  const init = await authed(c, token('apikey_admin_active'))
  const maria = init.usersOnline.find((u) => u.id === user('maria').id)
  assert.equal(maria.connections, 2)
  assert.deepEqual(Object.keys(maria).sort(), ['connections', 'createdAt', 'id', 'lastSeen', 'session', 'type', 'username'])
  assert.equal(maria.session, null)
  assert.equal(maria.type, 'admin')
  assert.equal(typeof maria.lastSeen, 'number')
  assert.equal(typeof maria.createdAt, 'number')
  const admin = init.usersOnline.find((u) => u.id === user('admin').id)
  assert.equal(admin.connections, 1, 'the new socket counts itself')
  for (const s of [a, b, c]) s.disconnect()
})

test('admin_message reaches every authenticated socket on both paths and no unauthenticated one', async () => {
  const admin = track(webClient(srv.url))
  await authed(admin, token('legacy_admin'))
  const onRoot = track(webClient(srv.url, '/socket.io'))
  const onBase = track(pollingClient(srv.url, '/audiobookshelf/socket.io'))
  await authed(onRoot, token('legacy_tom'))
  await authed(onBase, token('apikey_tom_active'))
  const anon = track(webClient(srv.url))
  await anon.connected$
  const failed = track(webClient(srv.url))
  failed.on('connect', () => failed.emit('auth', token('legacy_olaf')))
  assert.deepEqual(await failed.next('auth_failed'), { message: 'Invalid user' })

  admin.emit('message_all_users', { message: 'Server restarts at 3' })
  for (const s of [admin, onRoot, onBase]) assert.equal(await s.next('admin_message'), 'Server restarts at 3')
  await sleep(300)
  for (const s of [anon, failed]) assert.deepEqual(s.received('admin_message'), [])
  for (const s of [admin, onRoot, onBase]) assert.equal(s.received('admin_message').length, 1, 'exactly once')
  for (const s of [admin, onRoot, onBase, anon, failed]) s.disconnect()
})

test('user_online and user_offline go to admins only, with the previous lastSeen', async () => {
  const admin = track(webClient(srv.url))
  await authed(admin, token('legacy_maria'))
  const tom = track(webClient(srv.url))
  await authed(tom, token('legacy_tom'))
  const online = await admin.next('user_online')
  const seen = [online]
  while (seen.at(-1).id !== user('tom').id) seen.push(await admin.next('user_online'))
  const tomOnline = seen.at(-1)
  assert.deepEqual(Object.keys(tomOnline).sort(), ['createdAt', 'id', 'lastSeen', 'session', 'type', 'username'])
  // A second auth: user_online carries the lastSeen written by the first.
  tom.emit('auth', token('legacy_tom'))
  await tom.next('init')
  const again = await admin.next('user_online')
  assert.ok(again.lastSeen >= (tomOnline.lastSeen ?? 0))
  assert.ok(again.lastSeen > Date.now() - 60000, 'the first auth set lastSeen to now')

  const sara = track(webClient(srv.url))
  await authed(sara, token('legacy_sara'))
  tom.disconnect()
  const offline = await admin.next('user_offline')
  assert.equal(offline.id, user('tom').id)
  assert.deepEqual(Object.keys(offline).sort(), ['createdAt', 'id', 'lastSeen', 'session', 'type', 'username'])
  // An unauthenticated socket leaving is nobody going offline.
  const anon = track(webClient(srv.url))
  await anon.connected$
  anon.disconnect()
  await sleep(300)
  assert.equal(admin.received('user_offline').length, 1)
  assert.deepEqual(sara.received('user_online'), [], 'non-admins get no user_* events')
  assert.deepEqual(sara.received('user_offline'), [])
  admin.disconnect()
  sara.disconnect()
})

test('user_offline once per socket, even when the user has others open', async () => {
  const admin = track(webClient(srv.url))
  await authed(admin, token('legacy_admin'))
  const a = track(webClient(srv.url))
  const b = track(pollingClient(srv.url))
  await authed(a, token('legacy_lena'))
  await authed(b, token('legacy_lena'))
  a.disconnect()
  assert.equal((await admin.next('user_offline')).id, user('lena').id)
  b.disconnect()
  assert.equal((await admin.next('user_offline')).id, user('lena').id)
  admin.disconnect()
})
