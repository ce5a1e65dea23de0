// VNet for the function app (outbound integration) and the Azure ML clusters, with their NSGs.
// The aml subnet's NSG opens ONLY what Azure ML and Ray need:
//   inbound TCP 29876-29877 from BatchNodeManagement (Azure ML's node agent),
//   inbound TCP 44224 from AzureMachineLearning (the service's run control),
//   everything between the cluster nodes inside the subnet (Ray: GCS 6379, dashboard 8265,
//   client 10001, object manager and worker ports 10002-19999 and ephemeral ports),
// and denies the rest of the Internet explicitly.

@description('Azure region.')
param location string

@description('Name of the virtual network.')
param vnetName string

@description('Address space of the virtual network.')
param addressPrefix string = '10.20.0.0/16'

@description('Subnet for the function app\'s VNet integration (Flex Consumption: delegated to Microsoft.App/environments).')
param functionsSubnetPrefix string = '10.20.0.0/24'

@description('Subnet for the Azure ML head and worker clusters.')
param amlSubnetPrefix string = '10.20.1.0/24'

@description('Tags for every resource.')
param tags object = {}

resource amlNsg 'Microsoft.Network/networkSecurityGroups@2023-11-01' = {
  name: '${vnetName}-aml-nsg'
  location: location
  tags: tags
  properties: {
    securityRules: [
      {
        name: 'AllowBatchNodeManagementInbound'
        properties: {
          description: 'Azure ML compute node agent (required for AmlCompute in a VNet)'
          priority: 100
          direction: 'Inbound'
          access: 'Allow'
          protocol: 'Tcp'
          sourceAddressPrefix: 'BatchNodeManagement'
          sourcePortRange: '*'
          destinationAddressPrefix: amlSubnetPrefix
          destinationPortRange: '29876-29877'
        }
      }
      {
        name: 'AllowAzureMachineLearningInbound'
        properties: {
          description: 'Azure ML service run control'
          priority: 110
          direction: 'Inbound'
          access: 'Allow'
          protocol: 'Tcp'
          sourceAddressPrefix: 'AzureMachineLearning'
          sourcePortRange: '*'
          destinationAddressPrefix: amlSubnetPrefix
          destinationPortRange: '44224'
        }
      }
      {
        name: 'AllowRayWithinSubnet'
        properties: {
          description: 'Ray head and workers talk on many ports (GCS, object manager, workers)'
          priority: 120
          direction: 'Inbound'
          access: 'Allow'
          protocol: '*'
          sourceAddressPrefix: amlSubnetPrefix
          sourcePortRange: '*'
          destinationAddressPrefix: amlSubnetPrefix
          destinationPortRange: '*'
        }
      }
      {
        name: 'DenyInternetInbound'
        properties: {
          description: 'Nothing else from the Internet'
          priority: 4000
          direction: 'Inbound'
          access: 'Deny'
          protocol: '*'
          sourceAddressPrefix: 'Internet'
          sourcePortRange: '*'
          destinationAddressPrefix: '*'
          destinationPortRange: '*'
        }
      }
    ]
  }
}

resource functionsNsg 'Microsoft.Network/networkSecurityGroups@2023-11-01' = {
  name: '${vnetName}-functions-nsg'
  location: location
  tags: tags
  properties: {
    securityRules: [
      {
        name: 'DenyInternetInbound'
        properties: {
          description: 'The integration subnet only carries the app\'s outbound traffic'
          priority: 4000
          direction: 'Inbound'
          access: 'Deny'
          protocol: '*'
          sourceAddressPrefix: 'Internet'
          sourcePortRange: '*'
          destinationAddressPrefix: '*'
          destinationPortRange: '*'
        }
      }
    ]
  }
}

resource vnet 'Microsoft.Network/virtualNetworks@2023-11-01' = {
  name: vnetName
  location: location
  tags: tags
  properties: {
    addressSpace: {
      addressPrefixes: [
        addressPrefix
      ]
    }
    subnets: [
      {
        name: 'functions'
        properties: {
          addressPrefix: functionsSubnetPrefix
          networkSecurityGroup: {
            id: functionsNsg.id
          }
          delegations: [
            {
              name: 'flex-consumption'
              properties: {
                serviceName: 'Microsoft.App/environments'
              }
            }
          ]
          serviceEndpoints: [
            {
              service: 'Microsoft.Storage'
            }
            {
              service: 'Microsoft.KeyVault'
            }
          ]
        }
      }
      {
        name: 'aml'
        properties: {
          addressPrefix: amlSubnetPrefix
          networkSecurityGroup: {
            id: amlNsg.id
          }
          serviceEndpoints: [
            {
              service: 'Microsoft.Storage'
            }
            {
              service: 'Microsoft.KeyVault'
            }
          ]
        }
      }
    ]
  }
}

output vnetName string = vnet.name
output functionsSubnetId string = resourceId('Microsoft.Network/virtualNetworks/subnets', vnet.name, 'functions')
output amlSubnetId string = resourceId('Microsoft.Network/virtualNetworks/subnets', vnet.name, 'aml')
output amlNsgName string = amlNsg.name
