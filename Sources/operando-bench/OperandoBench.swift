import ArgumentParser
import Foundation
import Logging
import OperandoBuffers
import OperandoCore
import OperandoIO
import OperandoStore
import Synchronization

/// Benchmarks: each figure is printed next to a baseline measured in the same run.
@main
struct OperandoBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "operando-bench",
        abstract: "Throughput of the rings and of recording, against memcpy and plain writes.",
        subcommands: [RingBench.self, RecordBench.self, SyncBench.self, ExportBench.self, MethodScriptBench.self, USBBench.self])
}

func seconds(_ body: () -> Void) -> Double {
    let clock = MonotonicRawClock()
    let t0 = clock.now()
    body()
    return clock.now().seconds(since: t0)
}

func emit(_ json: Bool, _ object: [String: Double], lines: [String]) {
    if json {
        let body = object.keys.sorted().map { "\"\($0)\": \(object[$0]!)" }.joined(separator: ", ")
        print("{\(body)}")
    } else {
        lines.forEach { print($0) }
    }
}

/// Pushes `count` records from a producer thread while this thread drains them; returns seconds.
func ringThroughput(count: Int, payloadBytes: Int, ringBytes: Int, claimBytes: Int) -> Double {
    let descriptor = StreamDescriptor(id: 0, name: "bench/s", device: "bench", kind: .frames, elementType: .uint8, fields: [Field("b", unit: "1")], shape: [payloadBytes], nominalRateHz: 1, maxPayloadBytes: payloadBytes)
    let channel = StreamChannel(descriptor: descriptor, ringBytes: ringBytes, policy: .block, backoff: ThreadSleep.yield)
    let clock = MonotonicRawClock()
    let start = Atomic<Bool>(false)
    let producer = IOThread(name: "bench-producer") {
        let payload = [UInt8](repeating: 0xA5, count: payloadBytes)
        while !start.load(ordering: .acquiring) {}
        payload.withUnsafeBytes { src in
            for _ in 0..<count {
                channel.push(hostTime: HostInstant(nanoseconds: 0), deviceTime: nil, payload: src)
            }
        }
    }
    var received = 0
    var sequenceSum: UInt64 = 0
    let t0 = clock.now()
    start.store(true, ordering: .releasing)
    while received < count {
        guard let claim = channel.ring.claim(maxBytes: claimBytes) else { continue }
        // Hand-off in place, as the writer does (it passes ring memory straight to writev):
        // the consumer reads each record's header, not a copy of its payload.
        channel.ring.forEachRecord(in: claim) { sequenceSum &+= $0.header.sequence }
        received += claim.records
        channel.ring.release(claim)
    }
    let elapsed = clock.now().seconds(since: t0)
    producer.join()
    precondition(channel.dropped == 0 && sequenceSum == UInt64(count) * UInt64(count - 1) / 2, "records lost or reordered")
    return elapsed
}

struct RingBench: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "ring", abstract: "Small records/s and 1 MiB frames/s through one ring, next to memcpy.")
    @Flag(name: .long) var json = false
    @Option(name: .long, help: "Small records to push.") var records = 20_000_000
    @Option(name: .long, help: "1 MiB frames to push.") var frames = 4000

    func run() throws {
        // Small records: an 8-byte sample, as a potentiostat or stage produces.
        let small = ringThroughput(count: records, payloadBytes: 8, ringBytes: 4 << 20, claimBytes: 256 << 10)
        let frameBytes = 1 << 20
        let big = ringThroughput(count: frames, payloadBytes: frameBytes, ringBytes: 64 << 20, claimBytes: 8 << 20)
        // Baseline: memcpy of the same bytes once, 1 MiB at a time into a 64 MiB buffer (the ring's size).
        let a = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 << 20, alignment: 64)
        let b = UnsafeMutableRawBufferPointer.allocate(byteCount: frameBytes, alignment: 64)
        a.initializeMemory(as: UInt8.self, repeating: 1)
        b.initializeMemory(as: UInt8.self, repeating: 2)
        defer { a.deallocate(); b.deallocate() }
        let copies = frames
        let memcpyTime = seconds {
            for i in 0..<copies {
                let slot = (i % 64) * frameBytes
                (a.baseAddress! + slot).copyMemory(from: b.baseAddress!, byteCount: frameBytes)
            }
        }
        let recordsPerSecond = Double(records) / small
        let frameGB = Double(frames * frameBytes) / big / 1e9
        let memcpyGB = Double(copies * frameBytes) / memcpyTime / 1e9
        emit(json, ["small_records_per_s": recordsPerSecond, "frame_gb_per_s": frameGB, "memcpy_gb_per_s": memcpyGB], lines: [
            String(format: "small records (8 B) through a ring: %.1f M records/s (target ≥ 50 M)", recordsPerSecond / 1e6),
            String(format: "1 MiB frames through a ring:       %.2f GB/s", frameGB),
            String(format: "memcpy of the same bytes:          %.2f GB/s", memcpyGB),
            String(format: "ratio ring/memcpy:                 %.0f%% (target ≥ 70%%)", frameGB / memcpyGB * 100),
        ])
    }
}

struct RecordBench: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "record", abstract: "1 MiB frames to disk through the writer, next to plain write+fdatasync.")
    @Flag(name: .long) var json = false
    @Option(name: .long, help: "Directory on the disk to measure (default: a temporary one).") var directory: String?
    @Option(name: .long, help: "MiB to write in each measurement.") var megabytes = 1024
    @Option(name: .long, help: "Measurements of each kind, alternating (best is kept; the VM's disk speed varies from one to the next).") var rounds = 4
    @Option(name: .long, help: "The writer's fdatasync interval (ms); the daemon's default is 500.") var syncMs = 500
    @Option(name: .long, help: "Ring size (MiB); the daemon's default ring_mb is 16.") var ringMb = 16

    func run() throws {
        let base = directory ?? NSTemporaryDirectory() + "operando-bench-\(getpid())"
        try FileSystem.makeDirectories(base)
        defer { try? FileManager.default.removeItem(atPath: base) }
        let frameBytes = 1 << 20
        let frames = megabytes
        let clock = MonotonicRawClock()

        // Alternate the two measurements (plain, writer, plain, writer, …) and keep the best of
        // each, so page-cache warm-up and writeback of the previous file favour neither.
        var plain = Double.infinity
        var recordTime = Double.infinity
        var dropped: UInt64 = 0
        for round in 0..<rounds {
            plain = min(plain, try plainWrite(base: base, bytes: frames * frameBytes, sourceBytes: ringMb << 20))
            let (t, d) = try recordFrames(base: base, round: round, frames: frames, frameBytes: frameBytes, ringBytes: ringMb << 20, syncInterval: .milliseconds(syncMs), clock: clock)
            recordTime = min(recordTime, t)
            dropped += d
        }
        let bytes = Double(frames * frameBytes)
        let recordGB = bytes / recordTime / 1e9
        let plainGB = bytes / plain / 1e9
        emit(json, ["record_gb_per_s": recordGB, "plain_write_gb_per_s": plainGB, "dropped": Double(dropped)], lines: [
            "disk: \(base), \(megabytes) MiB each, ring \(ringMb) MiB, best of \(rounds) alternating rounds",
            String(format: "recording (ring → writer → segment, CRC, sync): %.2f GB/s", recordGB),
            String(format: "plain write + fdatasync of the same bytes:    %.2f GB/s", plainGB),
            String(format: "ratio: %.0f%% (target ≥ 90%%), dropped: %llu (target 0)", recordGB / plainGB * 100, dropped),
        ])
    }
}

func seconds2(_ body: () throws -> Void) throws -> Double {
    let clock = MonotonicRawClock()
    let t0 = clock.now()
    try body()
    return clock.now().seconds(since: t0)
}

/// Writes `bytes` with write(2) in chunks of a quarter of `sourceBytes` (the writer's largest
/// claim), taken in turn from a buffer the size of the ring (so the source is no more
/// cache-resident than the ring's frames are), then one fdatasync. Returns seconds.
func plainWrite(base: String, bytes: Int, sourceBytes: Int) throws -> Double {
    let chunk = min(8 << 20, sourceBytes / 4)
    let source = [UInt8](repeating: 0x5A, count: sourceBytes)
    let path = base + "/plain.bin"
    defer { try? FileManager.default.removeItem(atPath: path) }
    return try seconds2 {
        let fd = try FileDescriptor.createTruncating(path)
        defer { fd.close() }
        try source.withUnsafeBytes { all in
            for i in 0..<(bytes / chunk) {
                let offset = (i * chunk) % all.count
                try fd.writeAll(UnsafeRawBufferPointer(rebasing: all[offset..<(offset + chunk)]))
            }
        }
        try fd.dataSync()
    }
}

/// Records `frames` 1 MiB frames through a ring and the writer into a run; returns seconds from
/// the first push until the run is closed and synced, and how many frames did not reach disk.
func recordFrames(base: String, round: Int, frames: Int, frameBytes: Int, ringBytes: Int, syncInterval: Duration, clock: MonotonicRawClock) throws -> (Double, UInt64) {
    let descriptor = StreamDescriptor(id: 0, name: "bench/frames", device: "bench", kind: .frames, elementType: .uint8, fields: [Field("b", unit: "1")], shape: [frameBytes], nominalRateHz: 1000, maxPayloadBytes: frameBytes)
    let channel = StreamChannel(descriptor: descriptor, ringBytes: ringBytes, policy: .block, backoff: { ThreadSleep.sleep(.microseconds(50)) }, checksum: CRC32C.function)
    var logger = Logger(label: "bench")
    logger.logLevel = .warning
    // No stop grace: the producer has finished before the stop, so nothing is in flight; the
    // daemon's 50 ms grace would be a fixed wait, not throughput. The final sync and the
    // manifest's fsync stay in the measurement.
    let recorder = Recorder(channels: [channel], clock: clock, options: .init(syncInterval: syncInterval, stopGrace: .zero), logger: logger)
    recorder.start()
    let anchor = clock.realtimeAnchor()
    let manifest = RunManifest(id: UUID().uuidString, name: "bench\(round)", metadata: [:], startAnchor: anchor, startReason: "bench", streams: [descriptor],
                               provenance: Provenance(daemonVersion: "bench", hostName: "", configPath: "", configText: "", devices: [], libraries: [:]), durability: "")
    let directory = try recorder.startRun(manifest: manifest, under: base)
    defer { try? FileManager.default.removeItem(atPath: directory) }
    ThreadSleep.sleep(.milliseconds(20))
    let t0 = clock.now()
    let producer = IOThread(name: "bench-producer") {
        let payload = [UInt8](repeating: 0x5A, count: frameBytes)
        payload.withUnsafeBytes { p in
            for _ in 0..<frames { channel.push(hostTime: clock.now(), deviceTime: nil, payload: p) }
        }
    }
    producer.join()
    let done = DispatchSemaphore(value: 0)
    let result = Mutex<RunManifest?>(nil)
    recorder.stopRun(at: clock.now(), reason: "bench") { r in
        result.withLock { $0 = try? r.get() }
        done.signal()
    }
    done.wait()
    let elapsed = clock.now().seconds(since: t0)
    recorder.shutdown(reason: "bench")
    let written = result.withLock { $0 }?.summary?.first?.written ?? 0
    return (elapsed, UInt64(frames) - written)
}
