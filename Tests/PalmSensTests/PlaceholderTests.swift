import XCTest
final class PalmSensPlaceholderTests: XCTestCase { func testPlaceholder() {} }
