import DemoDriver
import DemoSimulator
import Foundation
import OperandoCore
import OperandoIO
import OperandoVirtualCell
import Synchronization
import XCTest

/// Collects what a driver pushes.
final class CollectingSink: RecordSink, @unchecked Sendable {
    let clock: any HostClock
    private let lock = Mutex<([(Int, HostInstant, Int64?, [UInt8])], [Event])>(([], []))
    init(clock: any HostClock) { self.clock = clock }

    func push(stream: Int, hostTime: HostInstant, deviceTime: Int64?, payload: UnsafeRawBufferPointer) {
        let bytes = Array(payload)
        lock.withLock { $0.0.append((stream, hostTime, deviceTime, bytes)) }
    }

    func event(_ event: Event) { lock.withLock { $0.1.append(event) } }

    var records: [(stream: Int, host: HostInstant, device: Int64?, payload: [UInt8])] { lock.withLock { $0.0.map { ($0.0, $0.1, $0.2, $0.3) } } }
    var events: [Event] { lock.withLock { $0.1 } }
}

/// Delivers at most `chunk` bytes per read, to prove framing does not depend on read boundaries.
final class DripTransport: ByteStreamTransport, @unchecked Sendable {
    let inner: any ByteStreamTransport
    let chunk: Int
    init(_ inner: any ByteStreamTransport, chunk: Int) {
        self.inner = inner
        self.chunk = chunk
    }
    var endpoint: String { inner.endpoint }
    func open() throws { try inner.open() }
    func close() { inner.close() }
    func read(into buffer: UnsafeMutableRawBufferPointer, timeout: Duration) throws -> TransportRead {
        try inner.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<min(chunk, buffer.count)]), timeout: timeout)
    }
    func write(_ bytes: UnsafeRawBufferPointer, timeout: Duration) throws { try inner.write(bytes, timeout: timeout) }
}

final class DemoInstrumentTests: XCTestCase {
    let clock = MonotonicRawClock()

    /// Runs the simulator on its own thread for the test's duration.
    private func startSimulator(_ serve: @escaping @Sendable (@escaping () -> Bool) -> Void) -> (stop: @Sendable () -> Void, thread: IOThread) {
        let stopped = Atomic<Bool>(false)
        let box = StopBox(stopped)
        let t = IOThread(name: "test-sim") { serve { box.isStopped } }
        return ({ box.stop() }, t)
    }

    private func acquire(_ driver: some Instrument, _ link: DeviceLink, _ sink: CollectingSink, until: () -> Bool) throws {
        // Loops until the condition holds (not a time bound: gives up only after many iterations).
        for _ in 0..<200_000 where !until() { try driver.acquire(link: link, sink: sink, budget: .milliseconds(50)) }
    }

    private func potentiostatSamples(chunk: Int?) throws {
        let cell = VirtualCell()
        let link = InMemoryLink(clock: clock)
        let sim = DemoPotentiostatSimulator(cell: cell, clock: clock, serialNumber: "PS-T")
        let (stop, thread) = startSimulator { shouldStop in sim.serve(link.deviceByteStream, shouldStop: shouldStop) }
        defer { stop(); thread.join() }
        let driver = try DemoPotentiostatDriver(name: "p", settings: DeviceSettings(["rate_hz": .integer(200)]))
        let host: any ByteStreamTransport = chunk.map { DripTransport(link.hostByteStream, chunk: $0) } ?? link.hostByteStream
        let dl = DeviceLink.byteStream(host)
        let sink = CollectingSink(clock: clock)
        let identity = try driver.setup(link: dl, sink: sink)
        XCTAssertEqual(identity, DeviceIdentity(model: "DEMO-PSTAT", serialNumber: "PS-T", firmware: "1.2.0", protocolVersion: "demo-pstat/1"))
        try acquire(driver, dl, sink) { sink.records.count >= 100 }
        let records = sink.records
        XCTAssertGreaterThanOrEqual(records.count, 100)
        for r in records {
            XCTAssertEqual(r.stream, 0)
            XCTAssertEqual(r.payload.count, 24)
            let (e, i) = r.payload.withUnsafeBytes { ($0.loadUnaligned(as: Double.self), $0.loadUnaligned(fromByteOffset: 8, as: Double.self)) }
            XCTAssertTrue((2.9...4.4).contains(e), "E = \(e)")
            XCTAssertEqual(i, 0.0025, accuracy: 1e-5)
            XCTAssertNotNil(r.device)
        }
        // Device times increase by the sample period (200 Hz → 5 ms, device clock 25 ppm fast).
        let steps = zip(records.dropFirst(), records).map { $0.device! - $1.device! }
        XCTAssertTrue(steps.allSatisfy { abs($0 - 5_000_000) < 2_000 }, "steps \(steps.prefix(5))")
        XCTAssertEqual(sink.events.filter { $0.kind == .stimulus }.first?.values["reason"], .string("start"))
        XCTAssertEqual(sink.events.filter { $0.kind == .alarm }.count, 0)
    }

    func testPotentiostat_againstSimulator_identifiesAndStreamsSamples() throws {
        try potentiostatSamples(chunk: nil)
    }

    func testPotentiostat_bytesDripFedOneAtATime_decodeTheSame() throws {
        try potentiostatSamples(chunk: 1)
    }

    func testPotentiostat_garbageLines_becomeAlarmsAndDataContinues() throws {
        let link = InMemoryLink(clock: clock)
        let driver = try DemoPotentiostatDriver(name: "p", settings: DeviceSettings())
        let sink = CollectingSink(clock: clock)
        let device = link.deviceByteStream
        let garbage = "D 100 1.0 2.0 0\nD oops\n\u{0}\u{ff}\u{7f}\nD 200 3.5 0.001 0 extra\nS 300 0.002\nD 300 3.6 0.002 1\n"
        try device.write(garbage, timeout: .seconds(1))
        try acquire(driver, .byteStream(link.hostByteStream), sink) { sink.records.count >= 2 && sink.events.count >= 4 }
        XCTAssertEqual(sink.records.map(\.device), [100_000, 300_000])
        let alarms = sink.events.filter { $0.kind == .alarm }
        XCTAssertEqual(alarms.count, 4)
        XCTAssertTrue(alarms[0].message.contains("D oops"), alarms[0].message)
        XCTAssertEqual(driver.malformedLines, 4)
    }

    func testPotentiostat_whenUnplugged_acquireReportsDisconnected() throws {
        let link = InMemoryLink(clock: clock)
        let driver = try DemoPotentiostatDriver(name: "p", settings: DeviceSettings())
        let sink = CollectingSink(clock: clock)
        link.unplug()
        XCTAssertThrowsError(try driver.acquire(link: .byteStream(link.hostByteStream), sink: sink, budget: .milliseconds(10))) { error in
            XCTAssertEqual((error as? InstrumentError)?.code, .disconnected)
        }
    }

    func testPotentiostat_whenDeviceIsSilent_setupTimesOutWithAClearError() throws {
        let link = InMemoryLink(clock: clock)
        let driver = try DemoPotentiostatDriver(name: "p", settings: DeviceSettings())
        XCTAssertThrowsError(try driver.setup(link: .byteStream(link.hostByteStream), sink: CollectingSink(clock: clock))) { error in
            XCTAssertEqual((error as? InstrumentError)?.code, .replyTimedOut)
            XCTAssertTrue("\(error)".contains("no reply to \"*IDN?\""), "\(error)")
        }
    }

    /// A device that streamed and then went quiet is reported as lost, so the runner reconnects.
    func testPotentiostat_whenDataStops_acquireReportsTheSilence() throws {
        let clock = ManualTestClock()
        let link = InMemoryLink(clock: clock)
        let driver = try DemoPotentiostatDriver(name: "p", settings: DeviceSettings(["rate_hz": .integer(100)]))
        let sink = CollectingSink(clock: clock)
        let device = link.deviceByteStream
        try device.write("D 100 3.5 0.001 0\n", timeout: .seconds(1))
        try driver.acquire(link: .byteStream(link.hostByteStream), sink: sink, budget: .milliseconds(1))
        XCTAssertEqual(sink.records.count, 1)
        clock.advance(driver.silenceLimit - 1_000_000)
        XCTAssertNoThrow(try driver.acquire(link: .byteStream(link.hostByteStream), sink: sink, budget: .milliseconds(1)))
        clock.advance(2_000_000)
        XCTAssertThrowsError(try driver.acquire(link: .byteStream(link.hostByteStream), sink: sink, budget: .milliseconds(1))) { error in
            XCTAssertEqual((error as? InstrumentError)?.code, .replyTimedOut)
            XCTAssertTrue("\(error)".contains("stopped answering"), "\(error)")
        }
    }

    func testXRF_againstSimulator_streamsSpectraWithNickelLinesFollowingCharge() throws {
        var params = VirtualCell.Parameters()
        params.initialStateOfCharge = 0
        let cell = VirtualCell(params)
        // A short queue (four spectra), so spectra taken before the charge do not linger in the link.
        let link = InMemoryLink(clock: clock, queueLimit: 4 * 4120)
        let sim = DemoXRFSimulator(cell: cell, clock: clock, serialNumber: "X-T")
        let (stop, thread) = startSimulator { shouldStop in sim.serve(link.devicePackets, shouldStop: shouldStop) }
        defer { stop(); thread.join() }
        let driver = try DemoXRFDriver(name: "x", settings: DeviceSettings(["channels": .integer(1024), "interval_ms": .integer(20)]))
        let dl = DeviceLink.packets(link.hostPackets)
        let sink = CollectingSink(clock: clock)
        XCTAssertEqual(try driver.setup(link: dl, sink: sink).serialNumber, "X-T")
        func niCounts(_ payload: [UInt8]) -> (ni: Double, background: Double) {
            let counts = payload.withUnsafeBytes { b in (0..<1024).map { Double(b.loadUnaligned(fromByteOffset: 4 * $0, as: UInt32.self)) } }
            return (counts[740..<756].reduce(0, +), counts[940..<956].reduce(0, +))  // Ni Kα at 7.48 keV vs. a line-free region
        }
        try acquire(driver, dl, sink) { sink.records.count >= 20 }
        XCTAssertTrue(sink.records.allSatisfy { $0.payload.count == 4096 })
        let empty = sink.records.map { niCounts($0.payload) }.reduce((0.0, 0.0)) { ($0.0 + $1.ni, $0.1 + $1.background) }
        XCTAssertGreaterThan(empty.0, 5 * empty.1, "the Ni line stands above the background")
        // Charge the cell fully: the Ni line grows (×1.5 in the model).
        cell.advance(current: 1, hostSeconds: 1)
        let before = sink.records.count
        try acquire(driver, dl, sink) { sink.records.count >= before + 25 }
        let full = sink.records[(before + 5)..<(before + 25)].map { niCounts($0.payload) }.reduce(0.0) { $0 + $1.ni }
        let firstTwenty = sink.records[0..<20].map { niCounts($0.payload) }.reduce(0.0) { $0 + $1.ni }
        XCTAssertGreaterThan(full / firstTwenty, 1.3)
    }

    func testXRF_corruptedPackets_becomeAlarmsAndAreSkipped() throws {
        let link = InMemoryLink(clock: clock)
        let driver = try DemoXRFDriver(name: "x", settings: DeviceSettings(["channels": .integer(256)]))
        let sink = CollectingSink(clock: clock)
        let device = link.devicePackets
        var good = Array("SPEC".utf8) + [UInt8](repeating: 0, count: 12)
        good += withUnsafeBytes(of: UInt32(0).littleEndian, Array.init) + withUnsafeBytes(of: UInt32(256).littleEndian, Array.init)
        good += [UInt8](repeating: 1, count: 1024)
        for packet in [Array("JUNK".utf8), Array(good.prefix(100)), good] {
            try packet.withUnsafeBytes { try device.send($0, timeout: .seconds(1)) }
        }
        try acquire(driver, .packets(link.hostPackets), sink) { sink.records.count >= 1 }
        XCTAssertEqual(sink.records.count, 1)
        XCTAssertEqual(sink.events.filter { $0.kind == .alarm }.count, 2)
    }

    func testDrivers_rejectSettingsOutOfRange() {
        XCTAssertThrowsError(try DemoPotentiostatDriver(name: "p", settings: DeviceSettings(["rate_hz": .integer(0)])))
        XCTAssertThrowsError(try DemoPotentiostatDriver(name: "p", settings: DeviceSettings(["current_a": .number(1)])))
        XCTAssertThrowsError(try DemoXRFDriver(name: "x", settings: DeviceSettings(["channels": .integer(100)])))
    }
}

/// A host clock the test moves by hand.
final class ManualTestClock: HostClock, @unchecked Sendable {
    private let value = Mutex<Int64>(1_000_000_000)
    func now() -> HostInstant { HostInstant(nanoseconds: value.withLock { $0 }) }
    func advance(_ ns: Int64) { value.withLock { $0 += ns } }
    func realtimeAnchor() -> RealtimeAnchor {
        let n = now()
        return RealtimeAnchor(before: n, after: n, utcNanoseconds: n.nanoseconds, taiOffsetSeconds: 0)
    }
}

final class StopBox: Sendable {
    private let flag: Atomic<Bool>
    init(_ flag: consuming Atomic<Bool>) { self.flag = flag }
    func stop() { flag.store(true, ordering: .relaxed) }
    var isStopped: Bool { flag.load(ordering: .relaxed) }
}
