import Foundation
import NanonisDriver
import NanonisSimulator
import OperandoCore
import OperandoIO
import OperandoTestSupport
import OperandoVirtualCell
import Synchronization
import XCTest

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
