// A faithful stand-in for audiobookshelf's own Socket.IO server (server/SocketAuthority.js of
// audiobookshelf 2.36), for benchmarks only. Per auth it does what audiobookshelf does: verify the
// JWT with the npm jsonwebtoken, read the user from the SQLite database, emit user_online to the
// admins, save lastSeen, build usersOnline for admins, and answer init. message_all_users is
// audiobookshelf's emitter loop over every authenticated client. Both socket paths share clients.
// POST /api/socket/emit stands for the library server calling SocketAuthority's own emitters
// (emitter, clientEmitter, libraryItemEmitter with User.checkCanAccessLibraryItem), behind the
// same check as abs-socket's publishing API (a verified token of an admin read from the database).
//   PORT=3333 DATABASE=absdatabase.sqlite NODE_ENV=production node server.js
'use strict'
const http = require('node:http')
const { Server } = require('socket.io')
const jwt = require('jsonwebtoken')
const Database = require('better-sqlite3')

const db = new Database(process.env.DATABASE, { timeout: 10000 })
const secret =
  process.env.JWT_SECRET_KEY ||
  JSON.parse(db.prepare("SELECT value FROM settings WHERE key = 'server-settings'").get().value).tokenSecret
const getUser = db.prepare("SELECT * FROM users WHERE id = ? OR json_extract(extraData, '$.oldUserId') = ? LIMIT 1")
const saveLastSeen = db.prepare('UPDATE users SET lastSeen = ?, updatedAt = ? WHERE id = ?')

// Sequelize's SQLite date text: 2026-12-04 13:05:09.123 +00:00
const sequelizeDate = (ms) => new Date(ms).toISOString().replace('T', ' ').replace('Z', ' +00:00')
const parseDate = (text) => (text ? Date.parse(text.replace(' +00:00', 'Z').replace(' ', 'T')) : null)

class User {
  constructor(row) {
    Object.assign(this, row)
    this.lastSeen = parseDate(row.lastSeen)
    this.createdAt = parseDate(row.createdAt)
  }
  get isAdminOrUp() {
    return this.type === 'root' || this.type === 'admin'
  }
  get perms() {
    if (!this._perms) this._perms = (typeof this.permissions === 'string' ? JSON.parse(this.permissions || '{}') : this.permissions) || {}
    return this._perms
  }
  // User.checkCanAccessLibrary / checkCanAccessLibraryItemWithTags / checkCanAccessLibraryItem
  checkCanAccessLibrary(libraryId) {
    return !!this.perms.accessAllLibraries || (this.perms.librariesAccessible || []).includes(libraryId)
  }
  checkCanAccessLibraryItemWithTags(tags) {
    if (this.perms.accessAllTags) return true
    const selected = this.perms.itemTagsSelected || []
    if (this.perms.selectedTagsNotAccessible) return !tags.some((t) => selected.includes(t))
    return tags.some((t) => selected.includes(t))
  }
  checkCanAccessLibraryItem(item) {
    if (!this.checkCanAccessLibrary(item.libraryId)) return false
    if (item.explicit && !this.perms.accessExplicitContent) return false
    return this.checkCanAccessLibraryItemWithTags(item.tags || [])
  }
  toJSONForPublic() {
    return { id: this.id, username: this.username, type: this.type, session: null, lastSeen: this.lastSeen, createdAt: this.createdAt }
  }
}

const clients = {}

function emitter(evt, data) {
  for (const id in clients) if (clients[id].user) clients[id].socket.emit(evt, data)
}
function clientEmitter(userId, evt, data) {
  for (const id in clients) if (clients[id].user?.id === userId) clients[id].socket.emit(evt, data)
}
function libraryItemEmitter(evt, item, data) {
  for (const id in clients) if (clients[id].user?.checkCanAccessLibraryItem(item)) clients[id].socket.emit(evt, data)
}
function adminEmitter(evt, data) {
  for (const id in clients) if (clients[id].user?.isAdminOrUp) clients[id].socket.emit(evt, data)
}
function getUsersOnline() {
  const online = {}
  for (const c of Object.values(clients)) {
    if (!c.user) continue
    if (online[c.user.id]) online[c.user.id].connections++
    else online[c.user.id] = { ...c.user.toJSONForPublic(), connections: 1 }
  }
  return Object.values(online)
}

async function authenticateSocket(socket, token) {
  let data
  try {
    data = jwt.verify(token, secret, { algorithms: ['HS256', 'HS384', 'HS512'] })
  } catch {
    return socket.emit('auth_failed', { message: 'Invalid token' })
  }
  if (!data?.userId || data.type === 'refresh' || data.type === 'api') return socket.emit('auth_failed', { message: 'Invalid token' })
  const row = getUser.get(data.userId, data.userId)
  if (!row) return socket.emit('auth_failed', { message: 'Invalid token' })
  if (!row.isActive) return socket.emit('auth_failed', { message: 'Invalid user' })
  const client = clients[socket.id]
  if (!client) return
  client.user = new User(row)
  adminEmitter('user_online', client.user.toJSONForPublic())
  client.user.lastSeen = Date.now()
  saveLastSeen.run(sequelizeDate(client.user.lastSeen), sequelizeDate(client.user.lastSeen), client.user.id)
  const init = { userId: client.user.id, username: client.user.username }
  if (client.user.isAdminOrUp) init.usersOnline = getUsersOnline()
  socket.emit('init', init)
}

function onConnection(socket) {
  clients[socket.id] = { id: socket.id, socket, connected_at: Date.now() }
  socket.on('auth', (token) => authenticateSocket(socket, token))
  socket.on('ping', () => socket.emit('pong'))
  socket.on('message_all_users', (payload) => {
    const client = clients[socket.id] || {}
    if (client.user?.isAdminOrUp) emitter('admin_message', payload?.message || '')
  })
  socket.on('disconnect', () => {
    const client = clients[socket.id]
    if (client?.user) adminEmitter('user_offline', client.user.toJSONForPublic())
    delete clients[socket.id]
  })
}

function publish(req, res) {
  let body = ''
  req.on('data', (c) => (body += c))
  req.on('end', () => {
    const answer = (status, json) => {
      res.writeHead(status, { 'content-type': 'application/json' })
      res.end(JSON.stringify(json))
    }
    let claims
    try {
      claims = jwt.verify((req.headers.authorization || '').replace(/^Bearer /, ''), secret)
    } catch {
      return answer(401, { error: 'Unauthorized' })
    }
    const row = getUser.get(claims.userId, claims.userId)
    if (!row || !row.isActive) return answer(401, { error: 'Unauthorized' })
    if (!new User(row).isAdminOrUp) return answer(403, { error: 'Forbidden' })
    const { event, data, to } = JSON.parse(body)
    if (to.all) emitter(event, data)
    else if (to.users) for (const u of to.users) clientEmitter(u, event, data)
    else if (to.libraryItem) libraryItemEmitter(event, to.libraryItem, data)
    else return answer(400, { error: 'unsupported target' })
    answer(200, { ok: true })
  })
}

const server = http.createServer((req, res) => {
  if (req.method === 'POST' && req.url === '/api/socket/emit') return publish(req, res)
  res.writeHead(404)
  res.end()
})
const options = { cors: { origin: '*', methods: ['GET', 'POST'] }, maxHttpBufferSize: 1e6, pingInterval: 25000, pingTimeout: 20000 }
for (const path of ['/socket.io', '/audiobookshelf/socket.io']) new Server(server, { ...options, path }).on('connection', onConnection)
server.listen(Number(process.env.PORT || 3333), '127.0.0.1')
process.on('SIGTERM', () => process.exit(0))
