import Foundation
import Logging
import OperandoBuffers
import OperandoCore
import OperandoIO
import Synchronization

/// The writer: one thread that drains every stream's ring into the active run's segments.
///
/// Records are written straight from ring memory (`writev`), each with its CRC-32C filled in
/// just before. Between runs the rings are drained and discarded so producers never stall.
/// A run covers the records stamped from its start instant to its stop instant; stopping waits
/// until every ring has given up everything stamped before the stop, then syncs and closes.
public final class Recorder: @unchecked Sendable {
    /// What the writer does when a write fails (disk full, I/O error).
    public enum WriteErrorPolicy: String, Sendable, CaseIterable {
        /// Close the segment on its last whole record, discard (and count as dropped) what
        /// arrives meanwhile, and resume in a new segment of the same run once the disk has room.
        case pause
        /// Close the run as failed.
        case stop
    }

    public struct Options: Sendable {
        /// fdatasync at least this often while data is arriving: the power-loss bound.
        public var syncInterval: Duration
        /// Start a new segment when the current one reaches this size.
        public var segmentBytes: Int
        /// Start a new segment when the current one is this old.
        public var segmentDuration: Duration
        /// What a failed write does.
        public var onWriteError: WriteErrorPolicy
        /// While paused, how often the writer checks whether it can resume.
        public var resumeCheckInterval: Duration
        /// Free bytes the run's file system must have before a paused run resumes.
        public var resumeFreeBytes: Int
        /// The most bytes claimed from one ring at a time (bounds latency of the other rings).
        public var claimBytes: Int
        /// How often a realtime anchor is recorded during a run.
        public var anchorInterval: Duration
        /// How long after the stop instant the writer keeps draining for records still in flight.
        public var stopGrace: Duration

        public init(
            syncInterval: Duration = .milliseconds(500), segmentBytes: Int = 256 << 20, segmentDuration: Duration = .seconds(3600),
            onWriteError: WriteErrorPolicy = .pause, resumeCheckInterval: Duration = .seconds(5), resumeFreeBytes: Int = 64 << 20,
            claimBytes: Int = 8 << 20, anchorInterval: Duration = .seconds(60), stopGrace: Duration = .milliseconds(50)
        ) {
            self.syncInterval = syncInterval
            self.segmentBytes = segmentBytes
            self.segmentDuration = segmentDuration
            self.onWriteError = onWriteError
            self.resumeCheckInterval = resumeCheckInterval
            self.resumeFreeBytes = resumeFreeBytes
            self.claimBytes = claimBytes
            self.anchorInterval = anchorInterval
            self.stopGrace = stopGrace
        }

        public var durabilityStatement: String {
            "fdatasync at least every \(syncInterval.nanoseconds / 1_000_000) ms while recording: at most that much data (plus what is still in the rings) is lost on power failure"
        }
    }

    /// A live view of one stream for `status`.
    public struct StreamStatus: Sendable, Codable {
        public var name: String
        public var produced: UInt64
        public var dropped: UInt64
        public var written: UInt64
        public var ringFill: Double
        public var ringBytes: Int
        public var policy: String
        /// Times a `block` producer waited for room (see `StreamChannel.blockedWaitCount`).
        public var blockedWaits: UInt64
    }

    public struct Status: Sendable {
        public var recording: Bool
        public var run: RunManifest?
        public var runDirectory: String?
        public var bytesWritten: UInt64
        public var streams: [StreamStatus]
        public var writeError: String?
        public var lastSyncAgo: Duration?
        /// Set while a run is paused by a write error: since when, why, and what resumes it.
        public var paused: String?
    }

    /// What the writer tells the daemon (on the writer thread; do not block in the handler).
    public enum Event: Sendable {
        /// Writing failed; the run is paused (policy `pause`).
        case paused(run: String, at: HostInstant, error: String)
        /// The run resumed in a new segment after `seconds`; `lost` records arrived meanwhile.
        case resumed(run: String, at: HostInstant, pausedAt: HostInstant, seconds: Double, lost: UInt64, error: String)
    }

    /// A recently seen record, for `tail`.
    public struct TailRecord: Sendable {
        public var stream: Int
        public var sequence: UInt64
        public var hostTime: HostInstant
        public var deviceTime: Int64?
        /// At most the first 4 KiB of the payload.
        public var payload: [UInt8]
        public var payloadBytes: Int
    }

    public let channels: [StreamChannel]
    private let clock: any HostClock
    private let options: Options
    private let logger: Logger
    private var thread: IOThread?

    private enum Command {
        case start(PendingRun, taken: Completion<Void>)
        case stop(at: HostInstant, reason: String, completion: @Sendable (Result<RunManifest, any Error>) -> Void)
        case shutdown(reason: String)
    }

    private struct PendingRun {
        var manifest: RunManifest
        var directory: String
        var runID: [UInt8]
    }

    private let commands = Mutex<[Command]>([])
    /// Host time of the writer loop's latest pass; the watchdog is fed only while it advances.
    /// Relaxed: it is a progress indicator, nothing is published through it.
    private let heartbeat = Atomic<Int64>(0)
    private let published: Mutex<Status>
    private let tails: Mutex<[[TailRecord]]>
    private static let tailDepth = 64
    private let eventHandler: (@Sendable (Event) -> Void)?

    public init(channels: [StreamChannel], clock: any HostClock, options: Options, logger: Logger, onEvent: (@Sendable (Event) -> Void)? = nil) {
        self.channels = channels
        self.clock = clock
        self.options = options
        self.logger = logger
        eventHandler = onEvent
        published = Mutex(Status(recording: false, run: nil, runDirectory: nil, bytesWritten: 0, streams: [], writeError: nil))
        tails = Mutex(Array(repeating: [], count: channels.count))
    }

    /// Starts the writer thread.
    public func start() {
        precondition(thread == nil)
        thread = IOThread(name: "writer") { [self] in loop() }
    }

    /// Creates the run directory and manifest, then tells the writer to record and waits until it
    /// has. The run covers records stamped from the instant the writer takes the command, so no
    /// record drained before that instant could have belonged to it, and anything stamped after
    /// this returns is in the run. Call from a thread that may block briefly.
    /// - Returns: the run's directory.
    public func startRun(manifest: RunManifest, under dataDirectory: String) throws -> String {
        if published.withLock({ $0.recording }) {
            throw RecorderError.alreadyRecording
        }
        let stamp = manifest.startedAt.prefix(19).replacingOccurrences(of: ":", with: "").replacingOccurrences(of: "-", with: "")
        let safeName = String(manifest.name.map { $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" || $0 == "." ? $0 : "_" })
        let directory = "\(dataDirectory)/runs/\(stamp)-\(safeName)"
        guard !FileSystem.exists(directory) else { throw RecorderError.runExists(directory) }
        try FileSystem.makeDirectories(directory + "/segments")
        try FileSystem.writeAtomically(directory + "/run.json", bytes: manifest.encoded())
        let runID = Array(UUID(uuidString: manifest.id).map { withUnsafeBytes(of: $0.uuid) { Array($0) } } ?? [])
        published.withLock { $0.recording = true; $0.run = manifest; $0.runDirectory = directory; $0.writeError = nil; $0.paused = nil }
        let taken = Completion<Void>()
        commands.withLock { $0.append(.start(PendingRun(manifest: manifest, directory: directory, runID: runID), taken: taken)) }
        taken.wait()
        return directory
    }

    /// Stops the run at the instant `at`; `completion` runs on the writer thread once every
    /// record stamped up to then is on disk and synced.
    public func stopRun(at: HostInstant, reason: String, completion: @escaping @Sendable (Result<RunManifest, any Error>) -> Void) {
        commands.withLock { $0.append(.stop(at: at, reason: reason, completion: completion)) }
    }

    /// Async form of `stopRun`.
    public func stopRun(at: HostInstant, reason: String) async throws -> RunManifest {
        try await withCheckedThrowingContinuation { cont in
            stopRun(at: at, reason: reason) { cont.resume(with: $0) }
        }
    }

    /// Stops any run (draining it), ends the thread and waits for it.
    public func shutdown(reason: String) {
        commands.withLock { $0.append(.shutdown(reason: reason)) }
        thread?.join()
        thread = nil
    }

    public var status: Status { published.withLock { $0 } }

    /// When the writer loop last went round (it goes round at least every few milliseconds unless
    /// it is stuck, e.g. in a write to a hung disk).
    public var lastHeartbeat: HostInstant { HostInstant(nanoseconds: heartbeat.load(ordering: .relaxed)) }

    /// Records of `stream` newer than `after` (all kept ones when nil).
    public func tail(stream: Int, after: UInt64?) -> [TailRecord] {
        tails.withLock { t in
            guard stream < t.count else { return [] }
            return t[stream].filter { after == nil || $0.sequence > after! }
        }
    }

    // MARK: Writer thread

    private final class ActiveRun {
        var pending: PendingRun
        let start: HostInstant
        var segment: SegmentWriter?
        var segmentCount = 0
        var stopAt: HostInstant?
        var stopReason = ""
        var completion: (@Sendable (Result<RunManifest, any Error>) -> Void)?
        var written: [UInt64]
        var bytes: [UInt64]
        var firstSeq: [UInt64?]
        var lastSeq: [UInt64]
        var droppedAtStart: [UInt64]
        var lastSync: HostInstant
        var lastAnchor: HostInstant
        var error: (any Error)?
        var quietSince: HostInstant?
        var segmentOpened: HostInstant
        /// Set while paused by a write error.
        var pausedSince: HostInstant?
        var pauseError = ""
        var lastResumeCheck: HostInstant
        /// Records that arrived while paused (or whose write failed): counted as dropped.
        var lostWhilePaused: UInt64 = 0
        var interruptions: [WriteInterruption] = []

        init(_ pending: PendingRun, channels: [StreamChannel], now: HostInstant) {
            self.pending = pending
            start = now
            written = Array(repeating: 0, count: channels.count)
            bytes = Array(repeating: 0, count: channels.count)
            firstSeq = Array(repeating: nil, count: channels.count)
            lastSeq = Array(repeating: 0, count: channels.count)
            droppedAtStart = channels.map(\.dropped)
            lastSync = now
            lastAnchor = now
            segmentOpened = now
            lastResumeCheck = now
        }
    }

    /// Closed runs whose manifest could not be written yet (a full disk): retried until it is.
    private var unsavedManifests: [(path: String, manifest: RunManifest)] = []
    private var lastManifestRetry = HostInstant(nanoseconds: 0)

    private func retryManifests(now: HostInstant) {
        guard !unsavedManifests.isEmpty, now.nanoseconds - lastManifestRetry.nanoseconds >= options.resumeCheckInterval.nanoseconds else { return }
        lastManifestRetry = now
        unsavedManifests.removeAll { item in
            guard (try? FileSystem.writeAtomically(item.path, bytes: item.manifest.encoded())) != nil else { return false }
            logger.notice("wrote the manifest of run \(item.manifest.name) (\(item.manifest.state.rawValue)) now that the disk has room")
            return true
        }
    }

    private func loop() {
        var run: ActiveRun?
        var parts: [UnsafeRawBufferPointer] = []
        parts.reserveCapacity(1024)
        var shuttingDown: String?
        var lastPublish = clock.now()
        var totalBytes: UInt64 = 0

        while true {
            for command in commands.withLock({ c -> [Command] in defer { c.removeAll() }; return c }) {
                switch command {
                case .start(let pending, let taken):
                    let r = ActiveRun(pending, channels: channels, now: clock.now())
                    run = r
                    openSegment(r)
                    taken.fulfil(())
                case .stop(let at, let reason, let completion):
                    if let r = run {
                        r.stopAt = at
                        r.stopReason = reason
                        r.completion = completion
                    } else {
                        completion(.failure(RecorderError.notRecording))
                    }
                case .shutdown(let reason):
                    shuttingDown = reason
                    if let r = run, r.stopAt == nil {
                        r.stopAt = clock.now()
                        r.stopReason = reason
                    }
                }
            }

            var moved = 0
            for index in channels.indices {
                moved += drain(index, run: run, parts: &parts, totalBytes: &totalBytes)
            }

            let now = clock.now()
            heartbeat.store(now.nanoseconds, ordering: .relaxed)
            retryManifests(now: now)
            if let r = run {
                if r.error == nil { maintain(r, now: now) }
                if let stopAt = r.stopAt {
                    // Done once past the grace period and a whole pass found nothing more.
                    if moved == 0 && now.nanoseconds >= stopAt.nanoseconds + options.stopGrace.nanoseconds {
                        finish(r, now: now)
                        run = nil
                    }
                }
            } else if shuttingDown != nil && moved == 0 {
                publish(run: nil, totalBytes: totalBytes)
                return
            }
            if now.nanoseconds - lastPublish.nanoseconds > 100_000_000 || moved == 0 {
                publish(run: run, totalBytes: totalBytes)
                lastPublish = now
            }
            if moved == 0 { ThreadSleep.sleep(.milliseconds(1)) }
        }
    }

    /// Drains one claim from one ring. Returns the number of records taken.
    private func drain(_ index: Int, run: ActiveRun?, parts: inout [UnsafeRawBufferPointer], totalBytes: inout UInt64) -> Int {
        let channel = channels[index]
        // At most a quarter of the ring at a time, so drop-oldest always has unclaimed records to drop.
        guard let claim = channel.ring.claim(maxBytes: min(options.claimBytes, channel.ring.capacity / 4)) else { return 0 }
        parts.removeAll(keepingCapacity: true)
        var last: RecordRing.Record?
        let isEvents = channel.descriptor.kind == .events
        let writing = run.map { $0.segment != nil && $0.error == nil } ?? false
        var batchRecords: UInt64 = 0
        var batchBytes: UInt64 = 0
        channel.ring.forEachRecord(in: claim) { record in
            if isEvents { remember(index, record) } else { last = record }
            guard let r = run, r.error == nil, record.header.hostTime >= r.start else { return }
            if let stopAt = r.stopAt, record.header.hostTime > stopAt { return }
            // The run's sequence span covers every record stamped in it, written or not, so a
            // record lost to a paused disk counts as dropped.
            let seq = record.header.sequence
            if r.firstSeq[index] == nil { r.firstSeq[index] = seq }
            r.lastSeq[index] = seq
            guard writing else {
                r.lostWhilePaused += 1
                return
            }
            if !record.isProducerChecksummed {
                let crc = CRC32C.checksum(record.body.1, continuing: CRC32C.checksum(record.body.0))
                record.prefix.storeBytes(of: crc.littleEndian, toByteOffset: 4, as: UInt32.self)
            }
            Self.append(record.whole.0, to: &parts)
            Self.append(record.whole.1, to: &parts)
            batchRecords += 1
            batchBytes += UInt64(record.whole.0.count + record.whole.1.count)
        }
        if let last { remember(index, last) }
        if let r = run, !parts.isEmpty, let segment = r.segment {
            do {
                try segment.append(parts)
                totalBytes += batchBytes
                r.written[index] += batchRecords
                r.bytes[index] += batchBytes
            } catch {
                r.lostWhilePaused += batchRecords
                writeFailed(r, error)
            }
        }
        channel.ring.release(claim)
        return claim.records
    }

    /// Adds a byte range to an iovec list, merging it with the previous one when contiguous.
    private static func append(_ part: UnsafeRawBufferPointer, to parts: inout [UnsafeRawBufferPointer]) {
        guard part.count > 0 else { return }
        if let previous = parts.last, previous.baseAddress! + previous.count == part.baseAddress! {
            parts[parts.count - 1] = UnsafeRawBufferPointer(start: previous.baseAddress, count: previous.count + part.count)
        } else {
            parts.append(part)
        }
    }

    private func remember(_ index: Int, _ record: RecordRing.Record) {
        let body = (record.body.0.count >= RecordLayout.headerSize + 4096)
            ? Array(record.body.0[RecordLayout.headerSize..<(RecordLayout.headerSize + 4096)])
            : Array((Array(record.body.0) + Array(record.body.1)).dropFirst(RecordLayout.headerSize).prefix(4096))
        let payloadBytes = record.body.0.count + record.body.1.count - RecordLayout.headerSize
        let t = TailRecord(stream: index, sequence: record.header.sequence, hostTime: record.header.hostTime, deviceTime: record.header.deviceTime, payload: body, payloadBytes: payloadBytes)
        tails.withLock { tails in
            tails[index].append(t)
            if tails[index].count > Self.tailDepth { tails[index].removeFirst(tails[index].count - Self.tailDepth) }
        }
    }

    private func openSegment(_ r: ActiveRun) {
        do {
            try r.segment?.sync()
            let anchor = clock.realtimeAnchor()
            r.segmentCount += 1
            let segment = try SegmentWriter(directory: r.pending.directory + "/segments", index: r.segmentCount, runID: r.pending.runID, anchor: anchor)
            // Every segment describes its streams and its clock, so it can be read on its own.
            let encoder = JSONEncoder()
            encoder.outputFormatting = .sortedKeys
            var head: [UInt8] = []
            for channel in channels {
                let json = Array(try encoder.encode(channel.descriptor))
                head += SegmentFormat.encodeRecord(RecordHeader(kind: .descriptor, streamID: channel.descriptor.id, sequence: 0, hostTime: anchor.host, deviceTime: nil), payload: json)
            }
            head += SegmentFormat.encodeRecord(RecordHeader(kind: .anchor, streamID: UInt32.max, sequence: 0, hostTime: anchor.host, deviceTime: nil), payload: Array(try encoder.encode(anchor)))
            try segment.append(head)
            r.segment = segment
            r.lastAnchor = anchor.host
            r.segmentOpened = anchor.host
        } catch {
            r.segment = nil
            writeFailed(r, error)
        }
    }

    private func maintain(_ r: ActiveRun, now: HostInstant) {
        if r.pausedSince != nil {
            tryResume(r, now: now)
            return
        }
        guard let segment = r.segment else { return }
        do {
            if now.nanoseconds - r.lastAnchor.nanoseconds >= options.anchorInterval.nanoseconds {
                let anchor = clock.realtimeAnchor()
                let encoder = JSONEncoder()
                try segment.append(SegmentFormat.encodeRecord(RecordHeader(kind: .anchor, streamID: UInt32.max, sequence: 0, hostTime: anchor.host, deviceTime: nil), payload: Array(encoder.encode(anchor))))
                r.lastAnchor = anchor.host
            }
            if now.nanoseconds - r.lastSync.nanoseconds >= options.syncInterval.nanoseconds {
                try segment.sync()
                r.lastSync = now
            }
            if segment.size >= options.segmentBytes || now.nanoseconds - r.segmentOpened.nanoseconds >= options.segmentDuration.nanoseconds {
                openSegment(r)
            }
        } catch {
            writeFailed(r, error)
        }
    }

    /// A write failed: pause or stop, as the policy says.
    private func writeFailed(_ r: ActiveRun, _ error: any Error) {
        switch options.onWriteError {
        case .stop: fail(r, error)
        case .pause: pause(r, error)
        }
    }

    /// Closes the segment (it ends on its last whole record: a partial write was cut off) and
    /// waits for room; records arriving meanwhile are counted as dropped.
    private func pause(_ r: ActiveRun, _ error: any Error) {
        guard r.pausedSince == nil else { return }
        let now = clock.now()
        try? r.segment?.sync()
        r.segment = nil
        r.pausedSince = now
        r.lastResumeCheck = now
        r.pauseError = "\(error)"
        let free = (try? FileSystem.freeBytes(r.pending.directory)).map { "\($0 >> 20) MiB free" } ?? "free space unknown"
        let why = "writing run \(r.pending.manifest.name) failed: \(error) (\(free)); recording is paused and resumes in a new segment once \(options.resumeFreeBytes >> 20) MiB are free in \(r.pending.directory); data written before is intact"
        logger.error("\(why)")
        published.withLock {
            $0.writeError = "\(error)"
            $0.paused = why
        }
        eventHandler?(.paused(run: r.pending.manifest.name, at: now, error: "\(error)"))
    }

    private func tryResume(_ r: ActiveRun, now: HostInstant) {
        guard let since = r.pausedSince, now.nanoseconds - r.lastResumeCheck.nanoseconds >= options.resumeCheckInterval.nanoseconds else { return }
        r.lastResumeCheck = now
        guard let free = try? FileSystem.freeBytes(r.pending.directory), free >= options.resumeFreeBytes else { return }
        r.pausedSince = nil  // openSegment pauses again if it fails
        openSegment(r)
        guard r.segment != nil else {
            r.pausedSince = r.pausedSince ?? since
            return
        }
        let seconds = now.seconds(since: since)
        r.interruptions.append(WriteInterruption(from: since, to: now, error: r.pauseError, lostRecords: r.lostWhilePaused))
        logger.notice("run \(r.pending.manifest.name) resumed in segment \(r.segmentCount) after \(String(format: "%.1f", seconds)) s paused; \(r.lostWhilePaused) records arrived meanwhile and are counted as dropped")
        eventHandler?(.resumed(run: r.pending.manifest.name, at: now, pausedAt: since, seconds: seconds, lost: r.lostWhilePaused, error: r.pauseError))
        r.lostWhilePaused = 0
        published.withLock {
            $0.writeError = nil
            $0.paused = nil
        }
    }

    private func fail(_ r: ActiveRun, _ error: any Error) {
        guard r.error == nil else { return }
        r.error = error
        logger.error("writing run \(r.pending.manifest.name) failed: \(error); recording stops, data written so far is kept; check free space and permissions of \(r.pending.directory)")
        published.withLock { $0.writeError = "\(error)" }
        if r.stopAt == nil {
            r.stopAt = clock.now()
            r.stopReason = "write error: \(error)"
        }
    }

    private func finish(_ r: ActiveRun, now: HostInstant) {
        var manifest = r.pending.manifest
        let anchor = clock.realtimeAnchor()
        if let segment = r.segment, r.error == nil {
            do {
                try segment.append(SegmentFormat.encodeRecord(RecordHeader(kind: .anchor, streamID: UInt32.max, sequence: 0, hostTime: anchor.host, deviceTime: nil), payload: Array(JSONEncoder().encode(anchor))))
                try segment.sync()
            } catch {
                fail(r, error)
            }
        }
        r.segment = nil
        if let since = r.pausedSince {
            r.interruptions.append(WriteInterruption(from: since, to: now, error: r.pauseError, lostRecords: r.lostWhilePaused))
            r.pausedSince = nil
            published.withLock { $0.paused = nil }
        }
        manifest.interruptions = r.interruptions.isEmpty ? nil : r.interruptions
        manifest.state = r.error == nil ? .complete : .failed
        manifest.stopAnchor = anchor
        manifest.stoppedAt = RunManifest.iso8601(anchor.utcNanoseconds)
        manifest.stopReason = r.stopReason
        manifest.segments = r.segmentCount
        manifest.summary = channels.indices.map { i in
            let written = r.written[i]
            let span = r.firstSeq[i].map { r.lastSeq[i] - $0 + 1 } ?? 0
            let counted = channels[i].dropped - r.droppedAtStart[i]
            let dropped = max(span - written, counted)
            return StreamCounts(name: channels[i].descriptor.name, produced: written + dropped, written: written, dropped: dropped, bytes: r.bytes[i])
        }
        let result: Result<RunManifest, any Error>
        do {
            try FileSystem.writeAtomically(r.pending.directory + "/run.json", bytes: manifest.encoded())
            result = .success(manifest)
        } catch {
            logger.error("could not write the manifest of run \(manifest.name) in \(r.pending.directory): \(error); the segments are intact; retrying every \(options.resumeCheckInterval) until the disk has room (or `operandoctl recover` rebuilds it)")
            unsavedManifests.append((r.pending.directory + "/run.json", manifest))
            lastManifestRetry = now
            result = .failure(error)
        }
        published.withLock { $0.recording = false; $0.run = manifest }
        logger.info("run \(manifest.name) closed (\(manifest.state.rawValue)): \(manifest.summary!.reduce(0) { $0 + $1.written }) records in \(r.segmentCount) segment(s)")
        r.completion?(result)
    }

    private func publish(run: ActiveRun?, totalBytes: UInt64) {
        let streams = channels.indices.map { i in
            let c = channels[i]
            return StreamStatus(
                name: c.descriptor.name, produced: c.produced, dropped: c.dropped, written: run?.written[i] ?? 0,
                ringFill: c.fill, ringBytes: c.ring.capacity, policy: c.policy.rawValue, blockedWaits: c.blockedWaitCount)
        }
        let now = clock.now()
        published.withLock {
            $0.streams = streams
            $0.bytesWritten = totalBytes
            $0.lastSyncAgo = run.map { .nanoseconds(now.nanoseconds - $0.lastSync.nanoseconds) }
        }
    }
}

public enum RecorderError: Error, CustomStringConvertible {
    case alreadyRecording
    case notRecording
    case runExists(String)

    public var description: String {
        switch self {
        case .alreadyRecording: "a run is already recording; stop it first (`operandoctl run stop`)"
        case .notRecording: "no run is recording; start one with `operandoctl run start NAME`"
        case .runExists(let d): "run directory \(d) already exists; choose another run name"
        }
    }
}
