import Foundation
import NanonisDriver
import NanonisSimulator
import OperandoCore
import OperandoIO
import OperandoVirtualCell
import Synchronization
import XCTest

/// A host clock the test moves by hand, for simulator tests where time must be exact.
final class ManualClock: HostClock {
    private let nanoseconds = Mutex<Int64>(1_000_000_000)

    func now() -> HostInstant { HostInstant(nanoseconds: nanoseconds.withLock { $0 }) }

    func advance(seconds: Double) { nanoseconds.withLock { $0 += Int64((seconds * 1e9).rounded()) } }

    func realtimeAnchor() -> RealtimeAnchor {
        let t = now()
        return RealtimeAnchor(before: t, after: t, utcNanoseconds: t.nanoseconds, taiOffsetSeconds: 0)
    }
}

final class StopFlag: Sendable {
    private let flag = Atomic<Bool>(false)
    func set() { flag.store(true, ordering: .relaxed) }
    var isSet: Bool { flag.load(ordering: .relaxed) }
}

/// Collects what the driver pushes: raw payloads per stream, events, round trips.
final class CollectingSink: RecordSink, @unchecked Sendable {
    struct Record {
        var stream: Int
        var hostTime: HostInstant
        var deviceTime: Int64?
        var bytes: [UInt8]

        var floats: [Float] {
            bytes.withUnsafeBytes { b in (0..<(b.count / 4)).map { Float(bitPattern: UInt32(littleEndian: b.loadUnaligned(fromByteOffset: 4 * $0, as: UInt32.self))) } }
        }

        var doubles: [Double] {
            bytes.withUnsafeBytes { b in (0..<(b.count / 8)).map { Double(bitPattern: UInt64(littleEndian: b.loadUnaligned(fromByteOffset: 8 * $0, as: UInt64.self))) } }
        }
    }

    let clock: any HostClock
    private let state = Mutex<(records: [Record], events: [Event], roundTrips: [(HostInstant, HostInstant)])>(([], [], []))

    init(clock: any HostClock) { self.clock = clock }

    func push(stream: Int, hostTime: HostInstant, deviceTime: Int64?, payload: UnsafeRawBufferPointer) {
        let r = Record(stream: stream, hostTime: hostTime, deviceTime: deviceTime, bytes: Array(payload))
        state.withLock { $0.records.append(r) }
    }

    func event(_ event: Event) { state.withLock { $0.events.append(event) } }

    func roundTrip(sent: HostInstant, received: HostInstant) { state.withLock { $0.roundTrips.append((sent, received)) } }

    var records: [Record] { state.withLock { $0.records } }
    func records(_ stream: Int) -> [Record] { records.filter { $0.stream == stream } }
    var events: [Event] { state.withLock { $0.events } }
    var roundTrips: [(HostInstant, HostInstant)] { state.withLock { $0.roundTrips } }
}

/// Delivers at most one byte per read, to prove replies are framed whatever the read boundaries.
final class OneByteAtATime: ByteStreamTransport, @unchecked Sendable {
    let inner: any ByteStreamTransport
    init(_ inner: any ByteStreamTransport) { self.inner = inner }
    var endpoint: String { inner.endpoint }
    func open() throws { try inner.open() }
    func close() { inner.close() }
    func read(into buffer: UnsafeMutableRawBufferPointer, timeout: Duration) throws -> TransportRead {
        try inner.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<1]), timeout: timeout)
    }
    func write(_ bytes: UnsafeRawBufferPointer, timeout: Duration) throws { try inner.write(bytes, timeout: timeout) }
}

/// A simulated controller served on its own thread over an in-memory link, as a device runner
/// would reach it; `replug()` serves the same controller (its scan still running) on a new link.
final class SimulatorBench: @unchecked Sendable {
    let clock: any HostClock
    let cell: VirtualCell
    let simulator: NanonisSimulator
    private(set) var link: InMemoryLink
    private var thread: IOThread?
    private var stop = StopFlag()
    let dripFed: Bool

    init(clock: any HostClock = MonotonicRawClock(), cell: VirtualCell = VirtualCell(), seed: UInt64 = 3, dripFed: Bool = false) {
        self.clock = clock
        self.cell = cell
        self.dripFed = dripFed
        simulator = NanonisSimulator(cell: cell, clock: clock, seed: seed)
        link = InMemoryLink(clock: clock)
        serve()
    }

    private func serve() {
        let device = link.deviceByteStream
        let simulator = simulator
        let stop = stop
        thread = IOThread(name: "nanonis-sim") { simulator.serve(device, shouldStop: { stop.isSet }) }
    }

    /// The driver's end.
    var host: DeviceLink { .byteStream(dripFed ? OneByteAtATime(link.hostByteStream) : link.hostByteStream) }

    func unplug() {
        link.unplug()
        thread?.join()
        thread = nil
    }

    func replug() {
        unplug()
        stop = StopFlag()
        link = InMemoryLink(clock: clock)
        serve()
    }

    func shutdown() {
        stop.set()
        thread?.join()
        thread = nil
    }

    deinit { shutdown() }
}

/// Fast scan settings for tests: 16 pixels × 8 lines over 5 µm at 250 µm/s (20 ms per pass).
func fastSettings(_ extra: [String: EventValue] = [:]) -> DeviceSettings {
    var values: [String: EventValue] = [
        "pixels": .integer(16), "lines": .integer(8), "frame_size_nm": .number(5000), "speed_nm_per_s": .number(250_000),
        "signals_hz": .number(20), "reply_timeout_ms": .integer(1000),
    ]
    values.merge(extra) { _, new in new }
    return DeviceSettings(values)
}

/// Calls `acquire` until `condition` holds; the count is a guard against a hang, not a timing bound.
func acquire(_ driver: NanonisDriver, _ link: DeviceLink, _ sink: CollectingSink, calls: Int = 20_000, file: StaticString = #filePath, line: UInt = #line, until condition: () -> Bool) throws {
    for _ in 0..<calls where !condition() {
        try driver.acquire(link: link, sink: sink, budget: .milliseconds(20))
    }
    XCTAssertTrue(condition(), "the condition did not come true within \(calls) acquire calls", file: file, line: line)
}

/// Bytes from a hex string ("3F00 0000"; spaces ignored).
func hexBytes(_ s: String) -> [UInt8] {
    let digits = Array(s.filter { !$0.isWhitespace })
    return stride(from: 0, to: digits.count, by: 2).map { UInt8(String(digits[$0...$0 + 1]), radix: 16)! }
}

/// A command name NUL-padded to 32 bytes.
func nameField(_ name: String) -> [UInt8] { Array(name.utf8) + [UInt8](repeating: 0, count: 32 - name.utf8.count) }
