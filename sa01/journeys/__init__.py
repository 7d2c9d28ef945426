"""User journeys as plain async code: testable without a broker."""
