
		package registryx.policy

		default allow = true
		
		violations[msg] {
			input.vulnerabilities.critical > 0
			input.environment == "prod"
			msg := sprintf("Image has %d critical vulnerabilities. Blocked in Prod.", [input.vulnerabilities.critical])
		}
		
		violations[msg] {
			input.environment == "prod"
			input.is_signed == false
			msg := "Image is not signed (cosign signature missing). Blocked in Prod."
		}
		
		allow = false {
			count(violations) > 0
		}
	